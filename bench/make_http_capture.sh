#!/usr/bin/env bash
# make_http_capture.sh — build a large, *real* HTTP/1.1 capture on loopback for
# wirestream benchmarks (roughly one million packets by default).
#
# What it does:
#   1. starts a private nginx on 127.0.0.1:<free port> (own config in a temp dir,
#      access_log off, a handful of static files of different sizes),
#   2. starts tcpdump on lo with a BPF filter for that port only, and "-c TARGET"
#      so tcpdump itself stops at exactly the target packet count,
#   3. drives traffic with short wrk rounds, alternating keep-alive rounds
#      (many requests per connection) with "Connection: close" rounds (thousands
#      of short connections, enough to cycle the ephemeral port range so that
#      4-tuples get reused), until tcpdump has its packets,
#   4. prints path, packet count, file size, TCP connection count and duration.
#
# All traffic is on 127.0.0.1 only. Nothing machine-wide is changed (in
# particular lo keeps its MTU of 65536, so segments on lo are large; that is
# why a 256 KiB file is served too: its responses span several segments).
#
# Usage: bench/make_http_capture.sh [--force] [OUT.pcap] [TARGET_PACKETS]
#        bench/make_http_capture.sh --tls [OUT.pcap] [TARGET_PACKETS]
#   --tls: HTTPS instead: nginx serves TLS 1.3 (a self-signed P-256 certificate made
#        in the temp dir) on 127.0.0.1:443, the port tshark dissects as TLS without
#        being told (so its work on the capture is a TLS dissection, like ours);
#        every "Connection: close" request is a full handshake. No key log: the
#        capture is what a node without one sees (handshakes, encrypted records).
#   env: WS_CAPTURE_OUT        output path        (default <repo>/bench/work/http.pcap)
#        WS_CAPTURE_PACKETS    target packets     (default 1000000)
#        WS_CAPTURE_ROUND_SECS wrk round length   (default 2)
#        WS_CAPTURE_MAX_SECS   traffic time cap   (default 90; keeps runs < ~2 min)
#        WS_CAPTURE_FORCE=1    same as --force
#        WS_CAPTURE_TLS=1      same as --tls
# An existing OUT that is newer than this script and holds >= 90% of the target
# packets is reused unless --force is given.
#
# Typical run on a 2-core VM: ~16-27 s of traffic, ~45 s in total (most of the
# rest is the tshark pass for the summary); 1M packets is ~1.4-1.5 GB with
# ~75k TCP connections and ~230-250k HTTP requests, 0 kernel drops.
set -euo pipefail

SCRIPT_PATH="$(readlink -f "${BASH_SOURCE[0]}")"
REPO_ROOT="$(cd "$(dirname "$SCRIPT_PATH")/.." && pwd)"

usage() { sed -n '2,/^set -euo/p' "$SCRIPT_PATH" | sed '$d; s/^# \{0,1\}//'; }

# ---------------------------------------------------------------- arguments ---
FORCE="${WS_CAPTURE_FORCE:-0}"
TLS="${WS_CAPTURE_TLS:-0}"
POSITIONAL=()
for arg in "$@"; do
    case "$arg" in
        --force|-f) FORCE=1 ;;
        --tls)      TLS=1 ;;
        -h|--help)  usage; exit 0 ;;
        -*)         echo "unknown option: $arg" >&2; usage >&2; exit 2 ;;
        *)          POSITIONAL+=("$arg") ;;
    esac
done
OUT="${POSITIONAL[0]:-${WS_CAPTURE_OUT:-$REPO_ROOT/bench/work/http.pcap}}"
TARGET="${POSITIONAL[1]:-${WS_CAPTURE_PACKETS:-1000000}}"
ROUND_SECS="${WS_CAPTURE_ROUND_SECS:-2}"
MAX_SECS="${WS_CAPTURE_MAX_SECS:-90}"
[[ "$TARGET" =~ ^[0-9]+$ && "$TARGET" -gt 0 ]] || { echo "bad packet count: $TARGET" >&2; exit 2; }
[[ "$ROUND_SECS" =~ ^[1-9][0-9]*$ ]] || { echo "WS_CAPTURE_ROUND_SECS must be a whole number >= 1 (wrk takes whole seconds)" >&2; exit 2; }

tools=(nginx wrk tcpdump)
[[ "$TLS" == 1 ]] && tools+=(openssl)
for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null || { echo "missing required tool: $tool" >&2; exit 1; }
done

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# Packet count of a pcap. capinfos (wireshark-common) reads the file without
# dissecting, so it is fast; fall back to tcpdump, which is always present.
count_packets() {
    if command -v capinfos >/dev/null; then
        capinfos -M -c "$1" 2>/dev/null | awk -F': *' '/Number of packets/ {print $2; f=1} END {if (!f) print 0}'
    else
        tcpdump -nn -r "$1" 2>/dev/null | wc -l
    fi
}

# Summary of a finished capture: path, packets, size, TCP connections, duration.
# $2=1 also runs tshark's conversation table (dissects every packet: ~15-20 s
# for 1M packets), otherwise only the cheap SYN count is used.
print_summary() {
    local f="$1" full="${2:-0}" packets size duration syns convs
    packets=$(count_packets "$f")
    size="$(du -h "$f" | cut -f1) ($(stat -c %s "$f") bytes)"
    if command -v capinfos >/dev/null; then
        duration="$(capinfos -M -u "$f" | awk -F': *' '/Capture duration/ {print $2}')"
    else
        duration="$(tcpdump -nn -tt -r "$f" 2>/dev/null | awk 'NR==1 {a=$1} {b=$1} END {printf "%.6f seconds", b-a}')"
    fi
    # Connections = client SYNs (SYN without ACK); a reused 4-tuple counts
    # again, which is what we want. Cheap: tcpdump filters without dissecting.
    syns=$(tcpdump -nn -r "$f" 'tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn' 2>/dev/null | wc -l)
    convs="not computed"
    if [[ "$full" == 1 ]] && command -v tshark >/dev/null; then
        # tshark splits reused 4-tuples into separate streams too, so this
        # should match the SYN count; HTTP dissection off to save time.
        convs=$(tshark -n -r "$f" --disable-protocol http -q -z conv,tcp 2>/dev/null | grep -c '<->' || true)
    fi
    echo "path:        $f"
    echo "packets:     $packets (target $TARGET)"
    echo "size:        $size"
    echo "tcp conns:   $syns client SYNs; tshark conv,tcp: $convs"
    echo "duration:    $duration (first to last packet)"
}

# --------------------------------------------------------- reuse old output ---
if [[ "$FORCE" != 1 && -f "$OUT" && "$OUT" -nt "$SCRIPT_PATH" ]]; then
    have=$(count_packets "$OUT")
    if (( have * 10 >= TARGET * 9 )); then
        log "reusing existing $OUT ($have packets, >= 90% of $TARGET; newer than script). Use --force to rebuild."
        print_summary "$OUT"
        exit 0
    fi
    log "existing $OUT has only $have packets (< 90% of $TARGET); rebuilding"
fi

mkdir -p "$(dirname "$OUT")"
OUT="$(readlink -f "$OUT")"
# Capture into a temp name and rename at the end, so an interrupted run never
# leaves behind a file that the reuse check above would accept.
PARTIAL="$OUT.partial"

# ------------------------------------------------------------------ cleanup ---
WORK="$(mktemp -d "${TMPDIR:-/tmp}/wirestream-capture.XXXXXX")"
NGINX_PID="" TCPDUMP_PID="" WRK_PID=""

stop_pid() {  # stop one process we started, by pid; escalate if it lingers
    local pid="$1" sig="${2:-TERM}"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill "-$sig" "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    stop_pid "$WRK_PID"
    stop_pid "$TCPDUMP_PID" INT      # INT lets tcpdump flush the pcap
    stop_pid "$NGINX_PID" TERM       # fast shutdown; master stops its workers too
    rm -rf "$WORK"
    rm -f "$PARTIAL"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# -------------------------------------------------------------- free port ---
# Pick a random free port *below* the ephemeral range, so the server port never
# looks like a client port in the capture. Tiny race until nginx binds; fine.
free_port() {
    local lo p
    lo=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range)
    (( lo > 11000 )) || lo=32768
    for _ in $(seq 200); do
        p=$(shuf -i "10000-$((lo - 1))" -n 1)
        [[ -z "$(ss -Htan "sport = :$p")" ]] && { echo "$p"; return; }
    done
    echo "no free port found" >&2; return 1
}
if [[ "$TLS" == 1 ]]; then
    # 443: tshark dissects it as TLS by default (on another port it would need
    # "-d tcp.port==P,tls", and the bench's tshark command is the same for every capture)
    [[ -z "$(ss -Htan "sport = :443")" ]] || { echo "127.0.0.1:443 is in use: --tls needs it" >&2; exit 1; }
    PORT=443
else
    PORT="$(free_port)"
fi

# --------------------------------------------------------- static content ---
# Sizes chosen so responses range from one small segment to several 64 KiB lo
# segments. Text files are text so payloads look like real pages in a dump.
mkdir -p "$WORK/www" "$WORK/tmp"
# (awk, not `yes | head`: yes would die of SIGPIPE, which pipefail treats as failure)
make_text() {
    awk -v n="$2" 'BEGIN { l = "wirestream benchmark payload 0123456789 abcdefghijklmnopqrstuvwxyz\n"
                           while (length(s) < n) s = s l; printf "%s", substr(s, 1, n) }' > "$WORK/www/$1"
}
make_text s100.txt    100
make_text s2k.html    2048
make_text s16k.json   16384
head -c 65536  /dev/urandom > "$WORK/www/s64k.bin"
head -c 262144 /dev/urandom > "$WORK/www/s256k.bin"

# ------------------------------------------------------------ TLS material ---
LISTEN="listen 127.0.0.1:$PORT backlog=4096;"
if [[ "$TLS" == 1 ]]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=localhost -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2> "$WORK/openssl.err" \
        || { cat "$WORK/openssl.err" >&2; echo "openssl could not make a certificate" >&2; exit 1; }
    # (no session cache or tickets: wrk does not resume sessions, each connection is a
    # full handshake, as a fleet of new clients' would be)
    LISTEN="listen 127.0.0.1:$PORT ssl backlog=4096;
        ssl_certificate $WORK/cert.pem;
        ssl_certificate_key $WORK/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;"
fi

# ------------------------------------------------------------ nginx config ---
# Temp paths default to /var/lib/nginx (may not exist / is shared); point them
# into our work dir, but only for modules this nginx build has.
NGINX_V="$(nginx -V 2>&1)"
TEMP_PATHS="    client_body_temp_path $WORK/tmp/body;"
for m in proxy fastcgi uwsgi scgi; do
    grep -q -- "--without-http_${m}_module" <<<"$NGINX_V" || TEMP_PATHS+=$'\n'"    ${m}_temp_path $WORK/tmp/$m;"
done

cat > "$WORK/nginx.conf" <<EOF
# Private nginx for make_http_capture.sh — generated, lives in $WORK.
user root;                 # we run as root; avoids needing www-data to read $WORK
worker_processes 1;        # 2-core box: leave a core for wrk + tcpdump (fewer drops)
daemon off;                # stays our child so cleanup can stop it by pid
pid $WORK/nginx.pid;
error_log $WORK/error.log warn;

events { worker_connections 4096; }

http {
    access_log off;        # logging would only cost CPU/disk
    sendfile on;
    tcp_nopush on;         # headers + body in the same segment, like most prod setups
    keepalive_timeout 30s;
    keepalive_requests 1000000;   # keep-alive rounds really reuse connections
$TEMP_PATHS
    types {
        text/plain        txt;
        text/html         html;
        application/json  json;
        application/octet-stream bin;
    }
    default_type application/octet-stream;

    server {
        $LISTEN
        server_name localhost;
        root $WORK/www;
        location / { }
    }
}
EOF

# --------------------------------------------------------- request mix (wrk) ---
# Weighted choice of paths (mostly small objects, like typical web traffic,
# which also keeps the pcap size sane), a few 404s, and a random query string so
# URLs are not all identical. wrk.format() keeps -H headers (Connection: close).
cat > "$WORK/mix.lua" <<'EOF'
local mix = {
    -- weights out of 200; mean response ~5.5 KB, so 1M packets is ~1.5 GB
    {104, "/s100.txt"}, {56, "/s2k.html"}, {20, "/s16k.json"},
    {6, "/s64k.bin"},   {1, "/s256k.bin"}, {13, "/missing/page.html"},
}
local total = 0
for _, e in ipairs(mix) do total = total + e[1] end
math.randomseed(os.time() + math.floor(os.clock() * 1e6))
request = function()
    local r, acc = math.random(total), 0
    for _, e in ipairs(mix) do
        acc = acc + e[1]
        if r <= acc then
            return wrk.format(nil, e[2] .. "?id=" .. math.random(1, 100000))
        end
    end
end
EOF

# ------------------------------------------------------------------ start ---
log "work dir $WORK; nginx on 127.0.0.1:$PORT; target $TARGET packets -> $OUT"
nginx -e "$WORK/error.log" -p "$WORK" -c "$WORK/nginx.conf" &
NGINX_PID=$!

# Wait until nginx listens (bash /dev/tcp: no extra tools needed).
for i in $(seq 50); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
    kill -0 "$NGINX_PID" 2>/dev/null || { cat "$WORK/error.log" >&2; echo "nginx failed to start" >&2; exit 1; }
    (( i == 50 )) && { echo "nginx did not come up on port $PORT" >&2; exit 1; }
    sleep 0.1
done

# tcpdump: -s 0 full packets (HTTP payload needed); -B in KiB, 256 MiB ring so
# the bursty 64 KiB lo segments don't overflow it; -c stops at exactly TARGET;
# -Z root so it can write wherever OUT is (it otherwise drops to user tcpdump).
rm -f "$PARTIAL"
tcpdump -i lo -nn -s 0 -B 262144 -Z root -c "$TARGET" -w "$PARTIAL" \
    "host 127.0.0.1 and tcp port $PORT" 2> "$WORK/tcpdump.err" &
TCPDUMP_PID=$!
# Wait for "listening on" so the first packets are not missed.
for _ in $(seq 50); do grep -q 'listening on' "$WORK/tcpdump.err" && break; sleep 0.1; done
grep -q 'listening on' "$WORK/tcpdump.err" || { cat "$WORK/tcpdump.err" >&2; echo "tcpdump did not start" >&2; exit 1; }

# Live packet count: tcpdump prints its stats to stderr on SIGUSR1.
captured_so_far() {
    kill -USR1 "$TCPDUMP_PID" 2>/dev/null || { echo "$TARGET"; return; }
    sleep 0.2
    grep -o '[0-9]* packets captured' "$WORK/tcpdump.err" | tail -1 | cut -d' ' -f1
}

# ---------------------------------------------------------- traffic rounds ---
# Alternate modes so both kinds of traffic are spread through the capture:
#   close:     1 request per connection -> SYN/FIN handshakes, port churn
#   keepalive: long connections, many requests each
SCHEME=http; [[ "$TLS" == 1 ]] && SCHEME=https
URL="$SCHEME://127.0.0.1:$PORT/"
T0=$SECONDS
round=0 total_reqs=0 total_errs=0
while kill -0 "$TCPDUMP_PID" 2>/dev/null; do
    if (( SECONDS - T0 >= MAX_SECS )); then
        log "time cap of ${MAX_SECS}s reached before $TARGET packets; stopping early"
        break
    fi
    round=$((round + 1))
    if (( round % 2 )); then
        mode=close;     extra=(-H 'Connection: close')
    else
        mode=keepalive; extra=()
    fi
    wrk -t2 -c50 -d"${ROUND_SECS}s" --timeout 5s -s "$WORK/mix.lua" "${extra[@]}" "$URL" \
        > "$WORK/wrk.$round.out" 2>&1 &
    WRK_PID=$!
    # Poll instead of a plain wait: tcpdump may hit -c mid-round, then the
    # rest of the round is useless traffic and we stop wrk right away (INT:
    # wrk still prints its totals).
    while kill -0 "$WRK_PID" 2>/dev/null; do
        kill -0 "$TCPDUMP_PID" 2>/dev/null || { kill -INT "$WRK_PID" 2>/dev/null || true; break; }
        sleep 0.1
    done
    wait "$WRK_PID" 2>/dev/null || true
    WRK_PID=""
    reqs=$(awk '/requests in/ {print $1}' "$WORK/wrk.$round.out"); reqs=${reqs:-0}
    errs=$(awk '/Socket errors/ {n=0; for (i=1;i<=NF;i++) if ($i ~ /^[0-9]+,?$/) n+=$i; print n}' "$WORK/wrk.$round.out"); errs=${errs:-0}
    total_reqs=$((total_reqs + reqs)); total_errs=$((total_errs + errs))
    note=""; (( errs > 0 )) && note=", $errs socket errors"
    log "round $round ($mode): $reqs requests$note; captured so far: $(captured_so_far)"
done

# Let tcpdump finish on its own if it reached -c, else stop it (INT = flush).
for _ in $(seq 30); do kill -0 "$TCPDUMP_PID" 2>/dev/null || break; sleep 0.1; done
stop_pid "$TCPDUMP_PID" INT
TCPDUMP_PID=""
stop_pid "$NGINX_PID" TERM
NGINX_PID=""
TRAFFIC_SECS=$((SECONDS - T0))

# tcpdump's final stats; "dropped by kernel" > 0 means the ring overflowed and
# the capture has holes (gaps without retransmissions the pipeline will see).
# "received by filter" is ~2x "captured" on lo: the kernel hands each packet
# to the socket twice (outgoing + incoming) and libpcap drops the outgoing copy.
DROP_LINE="$(grep 'dropped by kernel' "$WORK/tcpdump.err" | tail -1 || true)"
{ grep -E 'captured|received by filter|dropped by' "$WORK/tcpdump.err" || true; } | tail -3 | sed 's/^/tcpdump: /' >&2
if [[ "${DROP_LINE%% *}" =~ ^[0-9]+$ && "${DROP_LINE%% *}" -gt 0 ]]; then
    log "WARNING: tcpdump reports $DROP_LINE"
fi

mv -f "$PARTIAL" "$OUT"

# ----------------------------------------------------------------- summary ---
log "computing summary (tshark pass over the whole file takes a while)"
print_summary "$OUT" 1
echo "http reqs:   $total_reqs sent by wrk in $round rounds of ${ROUND_SECS}s ($total_errs socket errors); traffic phase ${TRAFFIC_SECS}s"
echo "kernel:      ${DROP_LINE:-no tcpdump stats line}"

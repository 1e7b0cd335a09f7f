"""TLS decryption with a key log (issue 19): ``wirestream analyze FILE --tls-keylog KEYS``.

A real nginx serves HTTPS on loopback with a self-signed certificate (TLS 1.2 and 1.3);
curl, with ``SSLKEYLOGFILE``, makes requests over every kind of suite we decrypt (TLS 1.2
ECDHE-RSA with AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305, AES-128-CBC-SHA with
encrypt_then_mac and AES-256-CBC-SHA384 without; TLS 1.3 with TLS_AES_128_GCM_SHA256,
TLS_AES_256_GCM_SHA384 and TLS_CHACHA20_POLY1305_SHA256), one connection per suite,
several requests on some (a 96 KB response: many records), and resumed sessions of TLS
1.2 and 1.3; one more connection's secrets are not logged. tcpdump captures it all on ``lo``. The oracle is tshark with
``-o tls.keylog_file:KEYS``: the (method, URI, status) of every request/response pair it
decrypts must be exactly our ``wire.transactions`` (each marked ``tls: true``, with its
connection's ``wire.tls`` record); the undecryptable connection gives neither tshark nor
us a transaction, and is counted ``tls_decrypt_drop.no_key``. Without the key log there are
no transactions at all and the records are all ``no_key``. The key log is a secret: no
output, error line or record of a run shows any of its bytes.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import TSHARK, free_port, needs, stop_process, wait_port
from tls_certs import self_signed

NGINX = shutil.which("nginx") or (os.path.exists("/usr/sbin/nginx") and "/usr/sbin/nginx") or None
CURL = shutil.which("curl")
TCPDUMP = shutil.which("tcpdump") or (os.path.exists("/usr/bin/tcpdump") and "/usr/bin/tcpdump") or None


def _missing() -> str | None:
    for name, path in (("nginx", NGINX), ("curl", CURL), ("tcpdump", TCPDUMP), ("tshark", TSHARK)):
        if not path:
            return f"{name} is not installed (Debian package {name})"
    if os.geteuid() != 0:
        return "tcpdump on lo needs root"
    return None


pytestmark = needs(_missing())

#: (name, curl options, paths requested on one connection, expected version, suite id)
RUNS: list[tuple[str, list[str], list[str], str, int]] = [
    ("tls12-aes128", ["--tls-max", "1.2", "--tlsv1.2", "--ciphers", "ECDHE-RSA-AES128-GCM-SHA256"],
     ["/one?x=1", "/missing", "/big"], "TLS1.2", 0xC02F),
    ("tls12-aes256", ["--tls-max", "1.2", "--tlsv1.2", "--ciphers", "ECDHE-RSA-AES256-GCM-SHA384"],
     ["/two"], "TLS1.2", 0xC030),
    ("tls12-chacha", ["--tls-max", "1.2", "--tlsv1.2", "--ciphers", "ECDHE-RSA-CHACHA20-POLY1305"],
     ["/three", "/teapot"], "TLS1.2", 0xCCA8),
    ("tls12-cbc-etm", ["--tls-max", "1.2", "--tlsv1.2", "--ciphers", "ECDHE-RSA-AES128-SHA"],
     ["/seven", "/big"], "TLS1.2", 0xC013),
    ("tls12-cbc-mte", ["--tls-max", "1.2", "--tlsv1.2", "--ciphers", "ECDHE-RSA-AES256-SHA384"],
     ["/eight", "/teapot", "/big"], "TLS1.2", 0xC028),
    ("tls13-aes128", ["--tlsv1.3", "--tls13-ciphers", "TLS_AES_128_GCM_SHA256"],
     ["/four", "/big", "/missing"], "TLS1.3", 0x1301),
    ("tls13-aes256", ["--tlsv1.3", "--tls13-ciphers", "TLS_AES_256_GCM_SHA384"], ["/five"], "TLS1.3", 0x1302),
    ("tls13-chacha", ["--tlsv1.3", "--tls13-ciphers", "TLS_CHACHA20_POLY1305_SHA256"],
     ["/six", "/teapot"], "TLS1.3", 0x1303),
]
#: (curl options, paths): one curl, each path on a connection of its own (Connection:
#: close), the later ones resuming the first one's session (TLS 1.2: session ticket;
#: TLS 1.3: PSK): new randoms and keys, the same key log
RESUMED: list[tuple[list[str], list[str]]] = [
    (["--tls-max", "1.2", "--tlsv1.2", "--ciphers", "ECDHE-RSA-AES128-GCM-SHA256"], ["/resume-12-a", "/resume-12-b"]),
    (["--tlsv1.3"], ["/resume-13-a", "/resume-13-b"]),
]
RESUMED_PATHS = [p for _o, paths in RESUMED for p in paths]

#: runs whose curl does not offer encrypt_then_mac (RFC 7366): their CBC records are
#: MAC-then-encrypt, the others' encrypt-then-MAC (what OpenSSL negotiates by default)
NO_ETM = {"tls12-cbc-mte"}
NO_ETM_CONF = """openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
Options = -EncryptThenMac
"""
#: a connection whose secrets curl does not log (SSLKEYLOGFILE unset)
UNLOGGED_PATH = "/not-logged"

NGINX_CONF = """
user root;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
daemon off;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA384;
        location / {{ return 200 "hello $uri\\n"; }}
        location /missing {{ return 404; }}
        location /teapot {{ return 418 "short and stout\\n"; }}
        # a body of many records (and TCP segments) in each direction's plaintext
        location /big {{ root {d}/www; try_files /big.txt =404; }}
    }}
}}
"""




class Traffic:
    """The capture, the key log and what curl was asked to do."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.pcap = directory / "https.pcap"
        self.keys = directory / "keys.log"


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traffic]:
    d = tmp_path_factory.mktemp("tlsdec")
    t = Traffic(d)
    cert, key = self_signed(d, "nginx")
    (d / "www").mkdir()
    (d / "www" / "big.txt").write_bytes(b"0123456789abcdef" * 6000)  # 96 KB: several records
    port = free_port()
    conf = d / "nginx.conf"
    conf.write_text(NGINX_CONF.format(d=d, port=port, cert=cert, key=key))
    nginx = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(d)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    tcpdump = None
    try:
        wait_port(port, nginx, "nginx")
        # --immediate-mode: each packet is handed over at once (not when a ring block
        # fills or times out), so that stopping it right after the traffic loses nothing
        tcpdump = subprocess.Popen([TCPDUMP, "-i", "lo", "--immediate-mode", "-U", "-s", "0", "-w", str(t.pcap),
                                    f"tcp port {port}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _wait_tcpdump(tcpdump)
        env = {**os.environ, "SSLKEYLOGFILE": str(t.keys)}
        (d / "no-etm.cnf").write_text(NO_ETM_CONF)
        no_etm_env = {**env, "OPENSSL_CONF": str(d / "no-etm.cnf")}
        for name, opts, paths, _v, _s in RUNS:
            # One curl: its requests share one connection (--next keeps it). --http1.1: the
            # HTTP/1.x analyser reads the plaintext (h2 is counted, not read).
            cmd = [CURL]
            for i, p in enumerate(paths):
                if i:
                    cmd.append("--next")
                cmd += ["-sk", "--http1.1", "-o", "/dev/null", *opts]
                if p == "/teapot":  # a POST with a body
                    cmd += ["--data", "a=1&b=2"]
                cmd.append(f"https://127.0.0.1:{port}{p}")
            subprocess.run(cmd, env=no_etm_env if name in NO_ETM else env, check=True, timeout=30)
        for opts, paths in RESUMED:
            cmd = [CURL]
            for i, p in enumerate(paths):
                cmd += [*(["--next"] if i else []), "-sk", "--http1.1", "-o", "/dev/null", *opts,
                        "-H", "Connection: close", f"https://127.0.0.1:{port}{p}"]
            subprocess.run(cmd, env=env, check=True, timeout=30)
        plain_env = {k: v for k, v in os.environ.items() if k != "SSLKEYLOGFILE"}
        subprocess.run([CURL, "-sk", "--http1.1", "-o", "/dev/null", f"https://127.0.0.1:{port}{UNLOGGED_PATH}"],
                       env=plain_env, check=True, timeout=30)
        time.sleep(0.5)  # the last FINs into the capture
    finally:
        if tcpdump is not None:
            stop_process(tcpdump, signal.SIGINT)  # tcpdump's "stop and write the rest"
        stop_process(nginx)
    assert t.pcap.stat().st_size > 0 and t.keys.stat().st_size > 0
    yield t


def _wait_tcpdump(proc: subprocess.Popen) -> None:
    # tcpdump says "listening on lo" on stderr once its filter is attached
    assert proc.stderr is not None
    os.set_blocking(proc.stderr.fileno(), False)
    deadline, seen = time.monotonic() + 10, b""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"tcpdump exited: {seen.decode(errors='replace')}")
        seen += proc.stderr.read() or b""
        if b"listening on" in seen:
            return
        time.sleep(0.05)
    raise AssertionError("tcpdump did not start within 10 s")


def tshark_pairs(pcap: Path, keys: Path | None) -> list[tuple[str, str, int]]:
    """Every (method, uri, status) pair tshark decrypts, in frame order of the responses."""
    cmd = [TSHARK, "-n", "-r", str(pcap)]
    if keys is not None:
        cmd += ["-o", f"tls.keylog_file:{keys}"]
    cmd += ["-Y", "http.request || http.response", "-T", "fields", "-E", "separator=\t",
            "-E", "occurrence=f", "-e", "frame.number", "-e", "http.request.method",
            "-e", "http.request.uri", "-e", "http.response.code", "-e", "http.request_in"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    requests: dict[str, tuple[str, str]] = {}
    pairs = []
    for line in proc.stdout.splitlines():
        frame, method, uri, code, request_in = line.split("\t")
        if method:
            requests[frame] = (method, uri)
        if code:
            method, uri = requests[request_in]
            pairs.append((method, uri, int(code)))
    return pairs


def run_analyze(pcap: Path, out: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict[str, list]]:
    proc = subprocess.run([sys.executable, "-m", "wirestream", "analyze", str(pcap), "--out", str(out),
                           "--json", "--no-progress", *args],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    records: dict[str, list[dict[str, Any]]] = {}
    for topic in ("wire.transactions", "wire.tls"):
        path = out / f"{topic}.jsonl"
        records[topic] = [json.loads(line) for line in path.open()] if path.exists() else []
    return proc, records


def counters(summary: dict[str, Any]) -> Counter[str]:
    """Every counter of the run's stages, summed over them (names are unique to a stage)."""
    total: Counter[str] = Counter()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if isinstance(v, int) and not isinstance(v, bool) and (k.startswith("tls_") or k.startswith("l7_")):
                    total[k] += v
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(summary.get("stages", summary))
    return total


@pytest.fixture(scope="module")
def decrypted(traffic: Traffic, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict[str, list]]:
    out = tmp_path_factory.mktemp("out-keys")
    proc, records = run_analyze(traffic.pcap, out, "--tls-keylog", str(traffic.keys))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"stdout": proc.stdout, "stderr": proc.stderr, "summary": json.loads(proc.stdout), "out": out}, records


def test_https_transactions_are_tsharks(traffic: Traffic, decrypted: tuple[dict, dict[str, list]]) -> None:
    run, records = decrypted
    expected = tshark_pairs(traffic.pcap, traffic.keys)
    # what curl was asked for, so that the oracle itself is checked too (it decrypted all)
    asked = sorted([p for _n, _o, paths, _v, _s in RUNS for p in paths] + RESUMED_PATHS)
    assert sorted(uri for _m, uri, _c in expected) == asked
    txns = records["wire.transactions"]
    got = sorted((t["method"], t["path"], t["status"]) for t in txns)
    assert got == sorted(expected)
    assert all(t["tls"] is True for t in txns)
    assert {c for _m, _u, c in expected} >= {200, 404, 418}
    assert ("POST", "/teapot", 418) in expected
    big = [t for t in txns if t["path"] == "/big"]
    assert len(big) == asked.count("/big") and all(t["response_body_size"] == 96_000 for t in big)


def test_every_suite_is_decrypted(traffic: Traffic, decrypted: tuple[dict, dict[str, list]]) -> None:
    """Each curl run's connection: its wire.tls record has the version and suite asked
    for, and its transactions (same connection_id) are the paths asked for, in order."""
    _run, records = decrypted
    by_conn: dict[str, list[str]] = {}
    for t in records["wire.transactions"]:
        by_conn.setdefault(t["connection_id"], []).append(t["path"])
    handshakes = {h["connection_id"]: h for h in records["wire.tls"]}
    seen = set()
    for name, _opts, paths, version, suite in RUNS:
        matching = [cid for cid, h in handshakes.items()
                    if h["version"] == version and h["cipher_suite_id"] == suite and by_conn.get(cid) == paths]
        assert len(matching) == 1, (name, handshakes, by_conn)
        seen.add(matching[0])
    # the resumed sessions: a connection per path, decrypted, resumption seen
    resumed = {cid for cid, paths in by_conn.items() if paths[0] in RESUMED_PATHS}
    assert sorted(p for cid in resumed for p in by_conn[cid]) == sorted(RESUMED_PATHS)
    assert all(len(by_conn[cid]) == 1 for cid in resumed)
    assert any(handshakes[cid]["resumed"] for cid in resumed)
    # the one connection whose secrets were not logged: a handshake, no transaction
    rest = set(handshakes) - seen - resumed
    assert len(rest) == 1 and not by_conn.get(rest.pop())


def test_cbc_records_were_both_mac_orders(traffic: Traffic, decrypted: tuple[dict, dict[str, list]]) -> None:
    """tshark says which CBC connections negotiated encrypt_then_mac: one did, one did not
    (so both record formats were decrypted above)."""
    proc = subprocess.run([TSHARK, "-n", "-r", str(traffic.pcap), "-Y", "tls.handshake.type == 2", "-T", "fields",
                           "-e", "tls.handshake.ciphersuite", "-e", "tls.handshake.extension.type",
                           "-E", "occurrence=a", "-E", "aggregator=,"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    etm = {}
    for line in proc.stdout.splitlines():
        suite, types = line.split("\t")
        etm[int(suite, 16)] = "22" in types.split(",")
    assert etm[0xC013] is True and etm[0xC028] is False


def test_undecryptable_records_are_counted(decrypted: tuple[dict, dict[str, list]]) -> None:
    run, _records = decrypted
    c = counters(run["summary"])
    assert c["tls_decrypted_records"] > 0
    # the unlogged connection: its application-data records (both directions, TLS 1.3
    # handshake flight included) are no_key; nothing else failed
    assert c["tls_decrypt_drop.no_key"] >= 2
    assert {k for k in c if k.startswith("tls_decrypt_drop.")} == {"tls_decrypt_drop.no_key"}
    assert c["l7_connections.http_in_tls"] == len(RUNS) + len(RESUMED_PATHS)


def test_without_the_key_log_nothing_is_decrypted(traffic: Traffic, tmp_path: Path) -> None:
    assert tshark_pairs(traffic.pcap, None) == []
    proc, records = run_analyze(traffic.pcap, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert records["wire.transactions"] == []
    assert len(records["wire.tls"]) == len(RUNS) + len(RESUMED_PATHS) + 1
    c = counters(json.loads(proc.stdout))
    assert c["tls_decrypt_drop.no_key"] > len(RUNS) * 2 and not c["tls_decrypted_records"]


def test_the_key_log_is_never_shown(traffic: Traffic, decrypted: tuple[dict, dict[str, list]],
                                    tmp_path: Path) -> None:
    run, _records = decrypted
    secrets = [line.split()[-1] for line in traffic.keys.read_text().splitlines() if line and line[0] != "#"]
    assert secrets
    shown = run["stdout"] + run["stderr"] + "".join(p.read_text() for p in run["out"].glob("*.jsonl"))
    for s in secrets:
        assert s.lower() not in shown.lower() and s[:16].lower() not in shown.lower()
    # an unreadable key log: one error line naming the path, exit 1, before anything runs
    missing = tmp_path / "no-such-keys.log"
    proc = subprocess.run([sys.executable, "-m", "wirestream", "analyze", str(traffic.pcap), "--no-progress",
                           "--tls-keylog", str(missing)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert str(missing) in proc.stderr and "cannot read the key log" in proc.stderr
    # a key log that is not one (our capture): read, its lines counted bad, a warning,
    # nothing decrypted, no crash
    proc, records = run_analyze(traffic.pcap, tmp_path / "junk", "--tls-keylog", str(traffic.pcap))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert records["wire.transactions"] == []
    assert f"warning: --tls-keylog {traffic.pcap}: no TLS secrets in it" in proc.stderr


def test_a_checkpointed_engine_decrypts_the_same(traffic: Traffic, decrypted: tuple[dict, dict[str, list]]) -> None:
    """The engine snapshotted and restored after every batch of 8 packets (mid-record,
    mid-handshake): the same HTTPS transactions as the run in one go and as analyze's.
    The snapshots hold no secret of the key log (the keys are derived again on restore
    from the key log of the restoring run)."""
    from local_pipeline import RecordingSink, packet_batches
    from wirestream._core import TlsKeyLog
    from wirestream.processors.engine import Engine, EngineOptions
    from wirestream.processors.l7.base import L7Options

    from wirestream.topics import TRANSACTIONS

    keylog = TlsKeyLog.load(str(traffic.keys))
    assert keylog.sessions == len(RUNS) + len(RESUMED_PATHS) and keylog.bad == 0
    options = EngineOptions(l7=L7Options(tls_keylog=keylog), packet_partitions=1, observation_partitions=1)
    batches = list(packet_batches(str(traffic.pcap), 8))
    secrets = [bytes.fromhex(line.split()[-1]) for line in traffic.keys.read_text().splitlines() if line]

    def run(cut: bool) -> list[tuple]:
        sink = RecordingSink()
        engine = Engine("local", 0, options, sink)
        for headers, payloads in batches:
            engine.feed(headers, payloads)
            if cut:
                data = engine.snapshot()
                assert not any(s[:16] in data for s in secrets)
                engine = Engine.restore(data, options, sink)
        engine.finish()
        return sorted((t["method"], t["path"], t["status"], t["tls"]) for t in sink.out[TRANSACTIONS])

    whole = run(cut=False)
    assert whole == sorted((t["method"], t["path"], t["status"], True) for t in decrypted[1]["wire.transactions"])
    assert run(cut=True) == whole


def test_secrets_embedded_in_pcapng_are_used(traffic: Traffic, tmp_path: Path) -> None:
    """A pcapng carrying its key log in Decryption Secrets Blocks (``editcap
    --inject-secrets``, as Wireshark shares captures) is decrypted without --tls-keylog,
    also gzip-compressed: the transactions are those tshark decrypts from the same file
    with no key log option, and no secret is shown."""
    editcap = shutil.which("editcap")
    assert editcap, "editcap (Debian: wireshark-common, which tshark depends on)"
    pcapng = tmp_path / "with-secrets.pcapng"
    subprocess.run([editcap, "--inject-secrets", f"tls,{traffic.keys}", str(traffic.pcap), str(pcapng)],
                   check=True, capture_output=True, timeout=60)
    expected = tshark_pairs(pcapng, None)  # tshark reads the blocks itself
    assert sorted(expected) == sorted(tshark_pairs(traffic.pcap, traffic.keys)) and expected
    gz = tmp_path / "with-secrets.pcapng.gz"
    gz.write_bytes(gzip.compress(pcapng.read_bytes()))
    secrets = [line.split()[-1] for line in traffic.keys.read_text().splitlines() if line and line[0] != "#"]
    for capture in (pcapng, gz):
        proc, records = run_analyze(capture, tmp_path / f"out-{capture.suffix}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        txns = records["wire.transactions"]
        assert sorted((t["method"], t["path"], t["status"]) for t in txns) == sorted(expected)
        assert all(t["tls"] is True for t in txns)
        shown = proc.stdout + proc.stderr
        assert not any(s.lower() in shown.lower() for s in secrets)
    # the key log written for the workers went with the run
    assert not list(Path(tempfile.gettempdir()).glob("wirestream-keys-*"))

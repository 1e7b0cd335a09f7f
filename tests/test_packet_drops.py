"""Kernel packet drops with their reasons, against nftables rules that drop and reject.

Two network namespaces of this test's own (tests/netns.py's ``LossyLink`` without loss,
IPv6 turned back on): a client and a server. nftables in the server's ``input`` hook,
one rule and ``counter`` per port and family, drops TCP to DROP_PORT, rejects TCP to
REJECT_PORT (``reject``: ICMP/ICMPv6 port unreachable) and to RESET_PORT (``reject with
tcp reset``); nothing listens on CLOSED_PORT (the stack answers with a RST). ``wirestream
produce drops`` (the real eBPF program on skb:kfree_skb) runs while the client tries each
port over IPv4 and IPv6, then publishes to the embedded broker; the wire.drops records,
per family, must say:

* DROP_PORT: reason ``netfilter_drop``, not refused, ``count`` summed equal to the nft
  rule's own packet counter (the SYNs);
* REJECT_PORT: ``netfilter_drop`` (the rule's verdict is a drop after the answer),
  refused where the answer is seen: IPv4's ICMP error through ``icmp:icmp_send``; ICMPv6
  errors have no tracepoint, so IPv6 rejects are refused only where fentry loads;
* RESET_PORT: the rule answers through nf_send_reset(6), which has no tracepoint: refused
  where fentry loads, elsewhere (this project's CI VM, whose kernel refuses fentry)
  ``netfilter_drop`` not refused, as documented; the test checks whichever the producer
  says applies here;
* CLOSED_PORT: reason ``no_socket``, refused;

the counts of each port equal to the rule's counter (nothing counted twice or lost), and
the interface and network namespace are the server's. Also: the reason names are this
kernel's (BTF and tracefs agree), and ``wirestream doctor`` says drops are available.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

from helpers import ebpf_unavailable, needs
from netns import IP, NFT, LossyLink, netns_available

NETNS_UNAVAILABLE = netns_available()


def _drops_unavailable() -> str | None:
    from wirestream.producers.packet_drops import unavailable

    return unavailable()


pytestmark = [
    needs(NETNS_UNAVAILABLE and f"network namespaces: {NETNS_UNAVAILABLE}"),
    needs(ebpf_unavailable()),
    needs(_drops_unavailable()),
]

DROP_PORT, REJECT_PORT, CLOSED_PORT, RESET_PORT = 7001, 7002, 7003, 7004
ATTEMPTS = 4

SERVER6, CLIENT6 = "fd00:77::2", "fd00:77::1"

# One counter per rule and family (inet table: one rule would count both).
RULES = "table inet ws_drops {\n    chain input {\n" \
        "        type filter hook input priority filter; policy accept;\n" + "".join(
            f"        meta nfproto {nfproto} tcp dport {port} counter {verdict}\n"
            for nfproto in ("ipv4", "ipv6")
            for port, verdict in ((DROP_PORT, "drop"), (REJECT_PORT, "reject"),
                                  (RESET_PORT, "reject with tcp reset"))) + "    }\n}\n"

# In the client: ATTEMPTS connects to each host,port; what each ended with, one line each.
CLIENT = textwrap.dedent("""
    import errno, socket, sys
    for target in sys.argv[1:]:
        host, port = target.rsplit(",", 1)
        outcomes = []
        for _ in range(ATTEMPTS):
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            s.settimeout(0.4)  # below the first SYN retransmission (1 s): one SYN per try
            try:
                s.connect((host, int(port)))
                outcomes.append("connected")
            except socket.timeout:
                outcomes.append("timeout")
            except OSError as e:
                outcomes.append(errno.errorcode.get(e.errno, str(e.errno)))
            s.close()
        print(target, " ".join(outcomes), flush=True)
""").replace("ATTEMPTS", str(ATTEMPTS))


def _rule_packets(link: LossyLink) -> dict[tuple[int, int], int]:
    """(IP version, port) -> packets its rule counted."""
    out = link.run(link.receiver, [NFT, "list", "table", "inet", "ws_drops"]).stdout
    counts = {}
    for line in out.splitlines():
        m = re.search(r"nfproto ipv([46]) tcp dport (\d+) counter packets (\d+)", line)
        if m:
            counts[int(m.group(1)), int(m.group(2))] = int(m.group(3))
    assert len(counts) == 6, out
    return counts


def _ipv6(link: LossyLink) -> None:
    """LossyLink turns IPv6 off in its namespaces (no autoconfiguration chatter): on again,
    with an address each (no duplicate address detection to wait for)."""
    for ns, dev, addr in ((link.sender, link.sender_if, CLIENT6), (link.receiver, link.receiver_if, SERVER6)):
        for conf in ("all", "default", dev):
            link.run(ns, ["sh", "-c", f"echo 0 > /proc/sys/net/ipv6/conf/{conf}/disable_ipv6"])
        link.run(ns, [IP, "-6", "addr", "add", f"{addr}/64", "dev", dev, "nodad"])


def test_drops_and_rejects_in_namespaces(broker, registry) -> None:
    from wirestream.codec import AvroCodec
    from wirestream.reader import TopicReader, end_offsets
    from wirestream.topics import DROPS, STATS

    start = end_offsets(broker.bootstrap, (DROPS, STATS))
    env = {**os.environ, "WIRESTREAM_BOOTSTRAP": broker.bootstrap, "WIRESTREAM_REGISTRY": registry.url}
    with LossyLink(loss_percent=0, rate_mbit=None) as link:
        _ipv6(link)
        subprocess.run([IP, "netns", "exec", link.receiver, NFT, "-f", "-"],
                       input=RULES, text=True, capture_output=True, check=True, timeout=10)
        server_netns = os.stat(f"/var/run/netns/{link.receiver}").st_ino
        servers = {4: (link.receiver_ip, link.sender_ip), 6: (SERVER6, CLIENT6)}
        proc = subprocess.Popen([sys.executable, "-m", "wirestream", "produce", "drops", "--interval", "60",
                                 "--cost", "--source-name", "drops-test"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            said = [proc.stderr.readline()]
            while "counting drops" not in said[-1] and said[-1] and len(said) < 10:
                said.append(proc.stderr.readline())  # bcc's own complaints may come first
            assert "counting drops" in said[-1], (said, proc.poll())
            targets = [f"{server},{port}" for server, _ in servers.values()
                       for port in (DROP_PORT, REJECT_PORT, CLOSED_PORT, RESET_PORT)]
            client = link.run(link.sender, [sys.executable, "-c", CLIENT, *targets])
            time.sleep(0.3)
            by_rule = _rule_packets(link)
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-3000:]
    outcomes = dict(line.split(" ", 1) for line in client.stdout.splitlines())
    for server, _ in servers.values():
        assert outcomes[f"{server},{DROP_PORT}"].split() == ["timeout"] * ATTEMPTS, outcomes
        for port in (REJECT_PORT, CLOSED_PORT, RESET_PORT):
            if ":" in server and port == REJECT_PORT:
                # The ICMPv6 port unreachable reaches the client (Icmp6InDestUnreachs), but
                # this kernel's TCP leaves the connect() to time out; the drop is the same.
                assert set(outcomes[f"{server},{port}"].split()) <= {"ECONNREFUSED", "timeout"}, outcomes
                continue
            assert outcomes[f"{server},{port}"].split() == ["ECONNREFUSED"] * ATTEMPTS, outcomes
    for (_version, port), packets in by_rule.items():
        assert packets >= ATTEMPTS if port == DROP_PORT else packets == ATTEMPTS, by_rule
    unavailable_here = said[-1]  # "(not available here: feature: why, ...)"
    fentry_rejects = "rejects_tcp_reset:" not in unavailable_here

    records, finals = [], []
    with TopicReader(broker.bootstrap, AvroCodec(registry.url), [DROPS, STATS], start) as reader:
        deadline = time.monotonic() + 20
        # The final report and the records it counts are on different topics, which a
        # reader may get in any order: read until both are in (or the deadline).
        while (not finals or len(records) < finals[0]["emitted"].get(DROPS, 0)) and time.monotonic() < deadline:
            for m in reader.poll(0.3):
                if m.record is None or not m.record["source_id"].startswith("drops-test-"):
                    continue
                if m.topic == DROPS:
                    records.append(m.record)
                elif m.record["final"]:
                    finals.append(m.record)
    # the producer's own account on wire.stats: every drop it counted, every record it sent
    (final,) = finals
    assert final["stage"] == "producer.drops", final
    assert final["emitted"] == {DROPS: len(records)} and final["received"] == sum(r["count"] for r in records)
    assert final["dropped"] == {}, final  # no overflow, no delivery error

    for version, (server, client_ip) in servers.items():
        ours = [r for r in records if r["dst_ip"] == server and r["src_ip"] == client_ip]

        def total(port: int, ours: list = ours, **match: object) -> int:
            return sum(r["count"] for r in ours
                       if r["dst_port"] == port and all(r[k] == v for k, v in match.items()))

        # a rule's drop: every packet it dropped, and nothing else, as a silent firewall drop
        assert total(DROP_PORT, reason="netfilter_drop", refused=False) == by_rule[version, DROP_PORT], ours
        assert total(DROP_PORT) == by_rule[version, DROP_PORT], ours
        # a rule's reject (ICMP unreachable): refused where the answer is seen -- IPv4's
        # icmp:icmp_send; ICMPv6 errors have no tracepoint, so only fentry sees them
        refused = version == 4 or fentry_rejects
        assert total(REJECT_PORT, reason="netfilter_drop", refused=refused) == by_rule[version, REJECT_PORT], ours
        assert total(REJECT_PORT) == by_rule[version, REJECT_PORT], ours
        # reject with tcp reset: refused only where fentry sees nf_send_reset(6)
        assert total(RESET_PORT, reason="netfilter_drop", refused=fentry_rejects) == by_rule[version, RESET_PORT]
        assert total(RESET_PORT) == by_rule[version, RESET_PORT], ours
        # no rule, no listener: the stack's own RST
        assert total(CLOSED_PORT, reason="no_socket", refused=True) == ATTEMPTS, ours
        assert total(CLOSED_PORT) == ATTEMPTS, ours
        for r in ours:
            assert r["protocol"] == 6 and r["ip_version"] == version and r["tcp_rst"] is False, r
            assert r["interface"] == link.receiver_if and r["netns"] == server_netns, r
            assert r["first_ts_us"] <= r["last_ts_us"] <= r["ts_us"], r
    # the per-run summary and the programs' measured cost
    assert "packets dropped by reason:" in out, out
    cost = dict(re.findall(r"cost (\S+): (\d+) runs", out))
    assert int(cost["tracepoint__skb__kfree_skb"]) >= sum(
        r["count"] for r in records if r["dst_ip"] in (link.receiver_ip, SERVER6)), out
    print(out)


def test_reason_names_are_this_kernels() -> None:
    """The names come from the running kernel's BTF, and agree with the tracepoint's own
    print format for every number it lists (the two sources the producer may use)."""
    from wirestream.producers.btf import BTF
    from wirestream.producers.packet_drops import (
        KFREE_SKB_FORMAT,
        drop_reasons,
        reasons_from_tracefs,
    )

    from_btf = drop_reasons(BTF())
    from_tracefs = reasons_from_tracefs(KFREE_SKB_FORMAT.read_text())
    assert len(from_tracefs) > 50 and from_btf[2] == "not_specified"
    assert {v: from_btf[v] for v in from_tracefs} == from_tracefs
    assert "netfilter_drop" in from_tracefs.values() and "no_socket" in from_tracefs.values()


def test_doctor_says_drops_are_available() -> None:
    """`wirestream doctor` proves the kfree_skb program (reason field) loads, and says
    which refusals can be told from drops here."""
    proc = subprocess.run([sys.executable, "-m", "wirestream", "doctor", "--json"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert report["capture_modes"]["ebpf_drops"] == {"available": True, "reason": ""}, report
    assert checks["drop reasons"]["ok"] and checks["drops probe"]["ok"], checks
    assert checks["refused (icmp)"]["ok"], checks
    assert "refused (tcp reset)" in checks  # either way, said


def test_struct_offsets_from_btf_are_consistent() -> None:
    """The BTF reader finds members through the kernel's anonymous unions and
    struct_group()s: facts that hold on every kernel the tracepoint exists on."""
    from wirestream.producers.btf import BTF, BTFError
    from wirestream.producers.packet_drops import SPAN_MAX, kernel_offsets

    btf = BTF()
    offsets = kernel_offsets(btf)
    # `unsigned char *head, *data;` are declared together, and headers sit before them
    assert btf.offset("sk_buff", "data") == offsets["OFF_SKB_HEAD"] + 8
    assert offsets["OFF_SKB_TRANSPORT_HEADER"] + 2 == offsets["OFF_SKB_NETWORK_HEADER"]
    assert btf.size("net_device", "name") == 16  # IFNAMSIZ
    assert offsets["SKB_SPAN_LEN"] <= SPAN_MAX and offsets["DEV_SPAN_LEN"] <= SPAN_MAX
    # what the program's run statistics are read at (producers/packet_drops.py)
    assert (btf.offset("bpf_prog_info", "run_time_ns"), btf.offset("bpf_prog_info", "run_cnt")) == (192, 200)
    try:
        btf.offset("sk_buff", "no_such_member")
    except BTFError as exc:
        assert "sk_buff has no member no_such_member" in str(exc)
    else:
        raise AssertionError("a missing member must raise BTFError")


FLOOD = textwrap.dedent("""
    import socket, sys
    host, n, ports = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(n):
        s.sendto(b"x", (host, 9000 + i % ports))
""")


def test_full_map_counts_what_it_could_not_hold() -> None:
    """Memory is bounded by --max-rows; the drops of rows that did not fit are counted,
    not lost silently. The overflow counter is the machine's (other drops may overflow
    meanwhile), so: what our rows hold + overflow covers everything the rule dropped,
    and our rows alone cannot (100 ports, 8 rows)."""
    from wirestream.producers.packet_drops import DropSource

    from wirestream.doctor import kernel_headers, load_bcc

    kernel_headers()
    source = DropSource(load_bcc(), max_rows=8)
    try:
        with LossyLink(loss_percent=0, rate_mbit=None) as link:
            rules = ("table inet ws_flood { chain input { type filter hook input priority filter; "
                     "policy accept; udp dport 9000-9099 counter drop; }; }")
            subprocess.run([IP, "netns", "exec", link.receiver, NFT, "-f", "-"], input=rules, text=True,
                           capture_output=True, check=True, timeout=10)
            source.drain()
            overflow_before = source.overflow()
            link.run(link.sender, [sys.executable, "-c", FLOOD, link.receiver_ip, "2000", "100"])
            out = link.run(link.receiver, [NFT, "list", "table", "inet", "ws_flood"]).stdout
            dropped = int(re.search(r"packets (\d+)", out).group(1))  # type: ignore[union-attr]
            rows = source.drain()
            overflow = source.overflow() - overflow_before
            receiver = link.receiver_ip
    finally:
        source.close()
    ours = sum(r.count for r in rows if r.key[1][:4] == socket.inet_aton(receiver) and 9000 <= r.key[6] < 9100)
    assert dropped == 2000 and len(rows) <= 8, (dropped, rows)
    assert 0 < ours < dropped and overflow > 0, (ours, overflow)
    assert ours + overflow >= dropped, (ours, overflow)

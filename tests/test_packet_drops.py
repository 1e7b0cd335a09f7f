"""Kernel packet drops with their reasons, against nftables rules that drop and reject.

Two network namespaces of this test's own (tests/netns.py's ``LossyLink`` without loss):
a client and a server. nftables in the server's ``input`` hook drops TCP to port
DROP_PORT (with a ``counter``) and rejects TCP to port REJECT_PORT (``reject``: an ICMP
port unreachable, so the client's connect() fails at once with ECONNREFUSED); nothing
listens on CLOSED_PORT (the stack answers with a RST). ``wirestream produce drops``
(the real eBPF program on skb:kfree_skb) runs while the client tries each port, then
publishes to the embedded broker; the wire.drops records must say:

* DROP_PORT: reason ``netfilter_drop``, not refused, ``count`` summed over the interval
  equal to the nft rule's own packet counter (SYN and its retransmissions);
* REJECT_PORT: refused (the reject rule's ICMP error was sent for these packets), never
  counted as a silent firewall drop;
* CLOSED_PORT: reason ``no_socket``, refused;
* RESET_PORT (``reject with tcp reset``): the rule answers through nf_send_reset, which
  has no tracepoint; where fentry loads, refused like REJECT_PORT, elsewhere (as on
  this project's CI VM, whose kernel refuses fentry) counted as ``netfilter_drop`` not
  refused, as documented -- the test checks whichever the producer says applies;

and the interface and network namespace are the server's.
"""

from __future__ import annotations

import json
import os
import re
import signal
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

RULES = f"""
table inet ws_drops {{
    chain input {{
        type filter hook input priority filter; policy accept;
        tcp dport {DROP_PORT} counter drop
        tcp dport {REJECT_PORT} counter reject
        tcp dport {RESET_PORT} counter reject with tcp reset
    }}
}}
"""

# In the client: ATTEMPTS connects to each port; what each ended with, one line per port.
CLIENT = textwrap.dedent("""
    import errno, socket, sys
    host = sys.argv[1]
    for port in map(int, sys.argv[2:]):
        outcomes = []
        for _ in range(ATTEMPTS):
            s = socket.socket()
            s.settimeout(0.4)  # below the first SYN retransmission (1 s): one SYN per try
            try:
                s.connect((host, port))
                outcomes.append("connected")
            except socket.timeout:
                outcomes.append("timeout")
            except OSError as e:
                outcomes.append(errno.errorcode.get(e.errno, str(e.errno)))
            s.close()
        print(port, " ".join(outcomes), flush=True)
""").replace("ATTEMPTS", str(ATTEMPTS))


def _rule_packets(link: LossyLink, port: int) -> int:
    out = link.run(link.receiver, [NFT, "list", "table", "inet", "ws_drops"]).stdout
    for line in out.splitlines():
        if f"dport {port} " in line and "counter" in line:
            m = re.search(r"packets (\d+)", line)
            assert m, line
            return int(m.group(1))
    raise AssertionError(f"no counter for port {port} in {out}")


def test_drops_and_rejects_in_namespaces(broker, registry) -> None:
    from wirestream.codec import AvroCodec
    from wirestream.reader import TopicReader, end_offsets
    from wirestream.topics import DROPS

    start = end_offsets(broker.bootstrap, (DROPS,))
    env = {**os.environ, "WIRESTREAM_BOOTSTRAP": broker.bootstrap, "WIRESTREAM_REGISTRY": registry.url}
    with LossyLink(loss_percent=0, rate_mbit=None) as link:
        subprocess.run([IP, "netns", "exec", link.receiver, NFT, "-f", "-"],
                       input=RULES, text=True, capture_output=True, check=True, timeout=10)
        server_netns = os.stat(f"/var/run/netns/{link.receiver}").st_ino
        proc = subprocess.Popen([sys.executable, "-m", "wirestream", "produce", "drops", "--interval", "60",
                                 "--cost", "--source-name", "drops-test"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            said = [proc.stderr.readline()]
            while "counting drops" not in said[-1] and said[-1] and len(said) < 10:
                said.append(proc.stderr.readline())  # bcc's own complaints may come first
            assert "counting drops" in said[-1], (said, proc.poll())
            client = link.run(link.sender, [sys.executable, "-c", CLIENT, link.receiver_ip,
                                            str(DROP_PORT), str(REJECT_PORT), str(CLOSED_PORT),
                                            str(RESET_PORT)])
            time.sleep(0.3)
            dropped_by_rule = _rule_packets(link, DROP_PORT)
            rejected_by_rule = _rule_packets(link, REJECT_PORT)
            reset_by_rule = _rule_packets(link, RESET_PORT)
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-3000:]
    outcomes = dict(line.split(" ", 1) for line in client.stdout.splitlines())
    assert outcomes[str(DROP_PORT)].split() == ["timeout"] * ATTEMPTS, outcomes
    assert outcomes[str(REJECT_PORT)].split() == ["ECONNREFUSED"] * ATTEMPTS, outcomes
    assert outcomes[str(CLOSED_PORT)].split() == ["ECONNREFUSED"] * ATTEMPTS, outcomes
    assert outcomes[str(RESET_PORT)].split() == ["ECONNREFUSED"] * ATTEMPTS, outcomes
    assert dropped_by_rule >= ATTEMPTS and rejected_by_rule == reset_by_rule == ATTEMPTS
    fentry_rejects = "rejects_tcp_reset:" not in said[-1]  # listed there when not available

    records = []
    with TopicReader(broker.bootstrap, AvroCodec(registry.url), [DROPS], start) as reader:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            got = [m.record for m in reader.poll(0.3) if m.record is not None]
            records += [r for r in got if r["source_id"].startswith("drops-test-")]
            if records and not got:
                break
    ours = [r for r in records if r["dst_ip"] == link.receiver_ip and r["src_ip"] == link.sender_ip]

    def total(port: int, **match: object) -> int:
        return sum(r["count"] for r in ours if r["dst_port"] == port and all(r[k] == v for k, v in match.items()))

    # port A: every packet the rule dropped, and nothing else, as a silent firewall drop
    assert total(DROP_PORT, reason="netfilter_drop", refused=False) == dropped_by_rule, ours
    assert total(DROP_PORT) == dropped_by_rule, ours
    # port B: the reject rule answered each SYN; refused, never a silent drop
    assert total(REJECT_PORT, refused=False) == 0, ours
    assert total(REJECT_PORT, reason="netfilter_drop", refused=True) == rejected_by_rule, ours
    # no rule, no listener: the stack's own RST
    assert total(CLOSED_PORT, reason="no_socket", refused=True) == ATTEMPTS, ours
    # reject with tcp reset: refused only where fentry sees nf_send_reset
    assert total(RESET_PORT, reason="netfilter_drop", refused=fentry_rejects) == reset_by_rule, ours
    assert total(RESET_PORT) == reset_by_rule, ours
    for r in ours:
        assert r["protocol"] == 6 and r["ip_version"] == 4 and r["tcp_rst"] is False, r
        assert r["interface"] == link.receiver_if and r["netns"] == server_netns, r
        assert r["first_ts_us"] <= r["last_ts_us"] <= r["ts_us"], r
    # the per-run summary and the programs' measured cost
    assert "packets dropped by reason:" in out, out
    cost = dict(re.findall(r"cost (\S+): (\d+) runs", out))
    assert int(cost["tracepoint__skb__kfree_skb"]) >= sum(r["count"] for r in ours), out
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

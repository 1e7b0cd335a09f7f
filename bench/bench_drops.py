#!/usr/bin/env python3
"""Per-drop cost of ``bpf/packet_drops.c`` on the skb:kfree_skb tracepoint.

Two private network namespaces joined by a veth pair (tests/netns.py); nftables in the
receiver drops UDP to ports 9000-65000; the sender sends ``--packets`` one-byte
datagrams spread over ``--flows`` destination ports (so the kernel map gets that many
rows). The kernel's own BPF statistics (sysctl kernel.bpf_stats_enabled, on for the run
and restored after) give each program's runs and run time: the mean is the cost added
to every dropped packet. The same flood is then run against an empty program on the
same tracepoint, the floor any kfree_skb program pays (``--no-baseline`` skips it).

Checked as it goes: the rows drained count exactly the packets the rule dropped.

    sudo .venv/bin/python bench/bench_drops.py                      # 200k drops, 1 and 5000 flows
    sudo .venv/bin/python bench/bench_drops.py --packets 500000 --flows 1 100 10000
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from netns import IP, NFT, LossyLink  # noqa: E402
from wirestream.producers.packet_drops import DropSource, prog_run_stats  # noqa: E402

from wirestream.doctor import kernel_headers, load_bcc  # noqa: E402

BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
RULES = ("table inet bench_drops { chain input { type filter hook input priority filter; "
         "policy accept; udp dport 9000-65000 counter drop; }; }")
FLOOD = """
import socket, sys
n, flows, host = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(n):
    s.sendto(b"x", (host, 9000 + i % flows))
"""
EMPTY = b"""#include <linux/skbuff.h>
#if __has_include(<net/dropreason.h>)
#include <net/dropreason.h>
#endif
TRACEPOINT_PROBE(skb, kfree_skb) { return args->reason == 0; }"""


def flood(packets: int, flows: int, stats: Any) -> tuple[int, int, int]:
    """(runs, ns, packets the rule dropped) of one flood, ``stats()`` giving (runs, ns)."""
    with LossyLink(loss_percent=0, rate_mbit=None) as link:
        subprocess.run([IP, "netns", "exec", link.receiver, NFT, "-f", "-"], input=RULES, text=True,
                       check=True, capture_output=True)
        runs0, ns0 = stats()
        link.run(link.sender, [sys.executable, "-c", FLOOD, str(packets), str(flows), link.receiver_ip],
                 timeout=600)
        runs1, ns1 = stats()
        out = link.run(link.receiver, [NFT, "list", "table", "inet", "bench_drops"]).stdout
        dropped = int(re.search(r"packets (\d+)", out).group(1))  # type: ignore[union-attr]
    return runs1 - runs0, ns1 - ns0, dropped


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=200_000)
    ap.add_argument("--flows", type=int, nargs="+", default=[1, 5000])
    ap.add_argument("--no-baseline", action="store_true")
    args = ap.parse_args()
    kernel_headers()
    bcc = load_bcc()
    was = BPF_STATS.read_text().strip()
    BPF_STATS.write_text("1")
    try:
        source = DropSource(bcc)
        fd = source.bpf.funcs[b"tracepoint__skb__kfree_skb"].fd
        try:
            for flows in args.flows:
                source.drain()
                runs, ns, dropped = flood(args.packets, flows, lambda: prog_run_stats(fd) or (0, 0))
                rows = source.drain()
                counted = sum(r.count for r in rows if source.reasons.get(r.key[4]) == "netfilter_drop")
                ok = "ok" if counted == dropped else f"MISMATCH: counted {counted}"
                print(f"packet_drops  flows={flows:<6} {runs} runs  {ns / max(runs, 1):.0f} ns/drop  "
                      f"rows={len(rows)}  nft dropped {dropped}: {ok}")
        finally:
            source.close()
        if not args.no_baseline:
            empty = bcc.BPF(text=EMPTY)
            fd = empty.funcs[b"tracepoint__skb__kfree_skb"].fd
            try:
                runs, ns, _ = flood(args.packets, 1, lambda: prog_run_stats(fd) or (0, 0))
                print(f"empty program              {runs} runs  {ns / max(runs, 1):.0f} ns/drop")
            finally:
                empty.cleanup()
    finally:
        BPF_STATS.write_text(was)
    return 0


if __name__ == "__main__":
    sys.exit(main())

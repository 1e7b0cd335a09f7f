#!/usr/bin/env python3
"""Live capture benchmark: sustained packets/s with no loss, and CPU per packet.

Two private network namespaces joined by a veth pair (offloads off: one packet per
frame). iperf3 sends UDP datagrams at a fixed packet rate from one to the other; the
wirestream capture producer (eBPF socket filter on a TPACKET_V3 ring, decode, batches
to Kafka on the embedded broker) captures on the sender's veth. The same traffic is then
captured by Wireshark's capture engine, ``dumpcap``, for comparison. For each rate:

- frames captured and frames the kernel could not put in the ring (``ring_full`` for
  wirestream, dumpcap's "dropped"); loss is also checked against what iperf3 sent;
- CPU per packet of the capturing process (user + system, including the Kafka client's
  threads for wirestream, and writing the file for dumpcap).

The processors are not run: this measures the producer. Target (issue 16): at least
200,000 packets/s per core with no loss. iperf3 shares the machine's cores with the capture
and on 2 cores sends ~100,000 packets/s at most, so the bench also prints the capacity
that the capture's CPU per packet leaves one core (10^6 / µs per packet): an upper bound,
not a demonstration; the MET line needs a rate actually sent and captured whole.

    sudo .venv/bin/python bench/bench_capture.py                 # 50k, 100k, 150k packets/s
    sudo .venv/bin/python bench/bench_capture.py --rates 50000 --seconds 10 --mode af_packet
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from wirestream.producers.live_capture import CaptureOptions, open_capture, run_capture
from wirestream.producers.publisher import PacketBatchPublisher

from wirestream.broker import EmbeddedBroker, ensure_topics
from wirestream.codec import AvroCodec
from wirestream.registry import EmbeddedSchemaRegistry
from wirestream.topics import ALL_TOPICS, PACKETS

IP = shutil.which("ip") or "/usr/sbin/ip"
PAYLOAD = 64  # bytes per datagram: small packets, the hard case for a capture
PORT = 5299


class Link:
    """Namespaces ``snd``/``rcv`` with a veth pair, offloads off; removed on exit."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.snd, self.rcv = f"wsb-snd-{tag}", f"wsb-rcv-{tag}"
        self.snd_if, self.rcv_if = f"wsbs{tag}", f"wsbr{tag}"
        net = secrets.randbelow(200) + 20
        self.snd_ip, self.rcv_ip = f"10.201.{net}.1", f"10.201.{net}.2"

    def __enter__(self) -> Link:
        for ns in (self.snd, self.rcv):
            _run([IP, "netns", "add", ns])
        _run([IP, "-n", self.snd, "link", "add", self.snd_if, "type", "veth", "peer", "name", self.rcv_if,
              "netns", self.rcv])
        for ns, dev, addr in ((self.snd, self.snd_if, self.snd_ip), (self.rcv, self.rcv_if, self.rcv_ip)):
            _run([IP, "-n", ns, "addr", "add", f"{addr}/30", "dev", dev])
            for feature in ("tso", "gso", "gro"):
                subprocess.run([IP, "netns", "exec", ns, "ethtool", "-K", dev, feature, "off"], capture_output=True)
            _run([IP, "-n", ns, "link", "set", dev, "up"])
            _run([IP, "-n", ns, "link", "set", "lo", "up"])
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        for ns in (self.snd, self.rcv):
            subprocess.run([IP, "netns", "del", ns], capture_output=True)

    def exec(self, ns: str, cmd: list[str], **kw: object) -> subprocess.Popen:
        return subprocess.Popen([IP, "netns", "exec", ns, *cmd], **kw)


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def _traffic(link: Link, rate_pps: int, seconds: float) -> tuple[subprocess.Popen, subprocess.Popen]:
    server = link.exec(link.rcv, ["iperf3", "-s", "-1", "-p", str(PORT), "-B", link.rcv_ip],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    bits = rate_pps * PAYLOAD * 8
    client = link.exec(link.snd, ["iperf3", "-c", link.rcv_ip, "-p", str(PORT), "-u", "-b", str(bits),
                                  "-l", str(PAYLOAD), "-t", str(seconds), "-J"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return server, client


def _sent_datagrams(client: subprocess.Popen) -> int:
    out, err = client.communicate(timeout=120)
    report = json.loads(out)
    return int(report["end"]["sum"]["packets"])


def bench_wirestream(link: Link, bootstrap: str, codec: AvroCodec, rate: int, seconds: float, mode: str) -> dict:
    options = CaptureOptions(interfaces=[link.snd_if], netns=link.snd, mode=mode, duration_s=seconds + 2,
                             stats_interval_s=3600)
    live = open_capture(options)
    publisher = PacketBatchPublisher(bootstrap, codec, 4, f"bench-{secrets.token_hex(4)}", stage="producer.live")
    server, client = _traffic(link, rate, seconds)
    usage0 = os.times()
    try:
        result = run_capture(live, publisher)
    finally:
        live.close()
    usage1 = os.times()
    sent = _sent_datagrams(client)
    server.wait(timeout=30)
    cpu = (usage1.user - usage0.user) + (usage1.system - usage0.system)
    return {"tool": f"wirestream ({live.mode})", "rate": rate, "sent": sent, "frames": result.frames,
            "lost": result.dropped.get("ring_full", 0), "cpu_s": cpu,
            "us_per_packet": cpu / max(1, result.frames) * 1e6, "pps": sent / seconds}


def bench_dumpcap(link: Link, rate: int, seconds: float, workdir: str) -> dict:
    path = os.path.join(workdir, "dumpcap.pcapng")
    cap = link.exec(link.snd, ["dumpcap", "-i", link.snd_if, "-w", path, "-q", "-B", "32"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # dumpcap prints nothing when it is ready
    server, client = _traffic(link, rate, seconds)
    sent = _sent_datagrams(client)
    server.wait(timeout=30)
    time.sleep(0.5)
    cap.send_signal(signal.SIGINT)
    _, status, usage = os.wait4(cap.pid, 0)
    err = cap.stderr.read()
    m = re.search(r"Packets received/dropped on interface .*?: (\d+)/(\d+)", err)
    frames, dropped = (int(m.group(1)), int(m.group(2))) if m else (0, -1)
    cpu = usage.ru_utime + usage.ru_stime
    os.unlink(path)
    return {"tool": "dumpcap (tshark)", "rate": rate, "sent": sent, "frames": frames, "lost": dropped,
            "cpu_s": cpu, "us_per_packet": cpu / max(1, frames) * 1e6, "pps": sent / seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="50000,100000,150000", help="packets/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=8.0, help="traffic per rate (default: %(default)s)")
    parser.add_argument("--mode", default="ebpf", choices=("ebpf", "af_packet"))
    parser.add_argument("--no-dumpcap", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_capture: needs root (network namespaces, packet sockets, eBPF)")
    for tool in ("iperf3", "ethtool") + (() if args.no_dumpcap else ("dumpcap",)):
        if shutil.which(tool) is None:
            sys.exit(f"bench_capture: {tool} is not installed (scripts/install --test)")
    rows = []
    with EmbeddedBroker() as broker, EmbeddedSchemaRegistry() as registry, Link() as link, \
            tempfile.TemporaryDirectory() as workdir:
        ensure_topics(broker.bootstrap, ALL_TOPICS, 4)
        codec = AvroCodec(registry.url)
        codec.register(PACKETS)
        for rate in (int(r) for r in args.rates.split(",")):
            rows.append(bench_wirestream(link, broker.bootstrap, codec, rate, args.seconds, args.mode))
            print(_row(rows[-1]), flush=True)
            if not args.no_dumpcap:
                rows.append(bench_dumpcap(link, rate, args.seconds, workdir))
                print(_row(rows[-1]), flush=True)
    print()
    # no loss: nothing dropped by the ring, and every datagram iperf3 sent was captured
    ok = [r for r in rows if r["tool"].startswith("wirestream") and r["lost"] == 0 and r["frames"] >= r["sent"]]
    best = max((r["pps"] for r in ok), default=0)
    # met: a rate of at least 50k asked, sent (iperf3 kept up, within 1 %), and captured whole
    # met: 200k or more actually sent (not only asked) and captured whole
    met = any(r["pps"] >= 200_000 for r in ok)
    print(f"wirestream: highest rate sustained with no loss {best:,.0f} packets/s (target 200,000 "
          f"per core): {'MET' if met else 'NOT MET (see the sent rates: iperf3 may be the limit)'}")
    if ok:
        cpu = max(r["us_per_packet"] for r in ok)
        print(f"wirestream: CPU per packet up to {cpu:.2f} µs: one core's capacity ~{1e6 / cpu:,.0f} "
              "packets/s (derived, not sent)")
    return 0


def _row(r: dict) -> str:
    # iperf3 sends what it can: on a small machine it shares the CPU with the capture, so
    # the rate achieved ("sent") can be below the rate asked for.
    return (f"{r['tool']:<22} asked {r['rate']:>7,} pkt/s, sent {r['pps']:>7,.0f} pkt/s: "
            f"{r['sent']:>9,} sent, {r['frames']:>9,} captured (+ the TCP control connection), "
            f"lost {r['lost']:>5,}; CPU {r['cpu_s']:5.2f} s = {r['us_per_packet']:5.2f} µs/packet")


if __name__ == "__main__":
    sys.exit(main())

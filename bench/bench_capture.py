#!/usr/bin/env python3
"""Live capture benchmark: sustained packets/s with no loss, and CPU per packet.

Two private network namespaces joined by a veth pair (offloads off: one packet per
frame). A sender sends UDP datagrams at a fixed packet rate from one to the other
(``bench/udp_sender.c``, compiled here: batches by ``sendmmsg``; or iperf3); the
wirestream capture producer (eBPF socket filter on a TPACKET_V3 ring, decode, batches
to Kafka on the embedded broker) captures on the sender's veth. The same traffic is then
captured by Wireshark's capture engine, ``dumpcap``, for comparison. For each rate:

- frames captured and frames the kernel could not put in the ring (``ring_full`` for
  wirestream, dumpcap's "dropped"); loss is also checked against what iperf3 sent;
- CPU per packet of the capturing process (user + system, including the Kafka client's
  threads for wirestream, and writing the file for dumpcap).

The processors are not run: this measures the producer. Target (issue 16): at least
200,000 packets/s per core with no loss. The sender shares the machine's cores with the
capture (iperf3, one ``sendto`` per datagram, sends ~90,000 packets/s at most on 2 cores,
hence the batching sender), so the bench also prints the capacity that the capture's CPU
per packet leaves one core (10^6 / µs per packet): an upper bound, not a demonstration;
the MET line needs a rate actually sent and captured whole.

    sudo .venv/bin/python bench/bench_capture.py                 # 100k, 200k, 400k packets/s
    sudo .venv/bin/python bench/bench_capture.py --rates 100000,200000,250000 --no-dumpcap
    sudo .venv/bin/python bench/bench_capture.py --rates 50000 --seconds 10 --mode af_packet --sender iperf3
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
from collections.abc import Callable

from bench_analyze import cpu_s
from wirestream.producers.live_capture import CaptureOptions, open_capture, run_capture
from wirestream.producers.publisher import PacketBatchPublisher

from wirestream.broker import EmbeddedBroker, ensure_topics
from wirestream.codec import AvroCodec
from wirestream.reader import TopicReader, end_offsets
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


#: the receiving end of bench/udp_sender.c: a bound UDP socket nobody reads (the kernel drops what does
#: not fit its buffer, cheaply; no ICMP "port unreachable" comes back into the capture)
_SINK = "import socket, sys, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); " \
        "s.bind((sys.argv[1], int(sys.argv[2]))); print('up', flush=True); time.sleep(float(sys.argv[3]))"


def _traffic(link: Link, rate_pps: int, seconds: float, sender: str | None) -> tuple[subprocess.Popen, subprocess.Popen]:
    """The receiver and the sender of ``rate_pps`` datagrams for ``seconds``: ``sender``'s
    (a compiled udp_sender), else iperf3's."""
    if sender is not None:
        server = link.exec(link.rcv, [sys.executable, "-c", _SINK, link.rcv_ip, str(PORT), str(seconds + 30)],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        server.stdout.readline()  # bound
        client = link.exec(link.snd, [sender, link.rcv_ip, str(PORT), str(rate_pps), str(seconds), str(PAYLOAD)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return server, client
    server = link.exec(link.rcv, ["iperf3", "-s", "-1", "-p", str(PORT), "-B", link.rcv_ip],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    bits = rate_pps * PAYLOAD * 8
    client = link.exec(link.snd, ["iperf3", "-c", link.rcv_ip, "-p", str(PORT), "-u", "-b", str(bits),
                                  "-l", str(PAYLOAD), "-t", str(seconds), "-J"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return server, client


def _sent_datagrams(client: subprocess.Popen, server: subprocess.Popen, sender: str | None) -> tuple[int, float]:
    """How many datagrams the sender sent, and in how many seconds (what it measured: a
    sender that could not keep up took longer than asked, and its rate says so)."""
    out, err = client.communicate(timeout=120)
    if client.returncode != 0:
        raise SystemExit(f"bench_capture: the sender failed: {err.strip()}")
    if sender is not None:
        server.kill()  # the sink sleeps on; iperf3's server ends by itself (-1)
        report = json.loads(out)
        return int(report["sent"]), float(report["seconds"])
    total = json.loads(out)["end"]["sum"]
    return int(total["packets"]), float(total["seconds"])


def _compile_sender(workdir: str) -> str:
    """bench/udp_sender.c, compiled with the machine's C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        sys.exit("bench_capture: --sender sendmmsg needs a C compiler (gcc), or use --sender iperf3")
    out = os.path.join(workdir, "udp_sender")
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "udp_sender.c")
    subprocess.run([cc, "-O2", "-Wall", "-Werror", "-o", out, src], check=True)
    return out


def bench_wirestream(link: Link, bootstrap: str, broker_pid: int, codec: AvroCodec, rate: int, seconds: float,
                     mode: str, sender: str | None) -> dict:
    # Until the sender is done (and 0.5 s more for its last frames); a sender that cannot
    # keep up takes longer than asked, and the capture must not end before it.
    options = CaptureOptions(interfaces=[link.snd_if], netns=link.snd, mode=mode, duration_s=4 * seconds + 30,
                             stats_interval_s=3600)
    live = open_capture(options)
    source = f"bench-{secrets.token_hex(4)}"
    publisher = PacketBatchPublisher(bootstrap, codec, 4, source, stage="producer.live")
    start = end_offsets(bootstrap, [PACKETS])
    server, client = _traffic(link, rate, seconds, sender)
    usage0, broker0 = os.times(), cpu_s(broker_pid)
    try:
        result = run_capture(live, publisher, stop=_after_exit(client, 0.5))
    finally:
        live.close()
    usage1, broker1 = os.times(), cpu_s(broker_pid)
    sent, took = _sent_datagrams(client, server, sender)
    server.wait(timeout=30)
    cpu = (usage1.user - usage0.user) + (usage1.system - usage0.system)
    return {"tool": f"wirestream ({live.mode})", "rate": rate, "sent": sent, "frames": result.frames,
            "lost": result.dropped.get("ring_full", 0), "cpu_s": cpu,
            "us_per_packet": cpu / max(1, result.frames) * 1e6, "pps": sent / took,
            "published": result.packets, "in_kafka": _packets_in_kafka(bootstrap, codec, start, source),
            # frames left out for a named reason (non-IP: ARP; in eBPF mode by the kernel's filter)
            "not_published": {k: v for k, v in result.dropped.items() if k != "ring_full" and v},
            "broker_us_per_packet": (broker1 - broker0) / max(1, result.frames) * 1e6}


def _after_exit(proc: subprocess.Popen, grace_s: float) -> Callable[[], bool]:
    """A stop check: true ``grace_s`` after ``proc`` has exited."""
    exited: list[float] = []

    def stop() -> bool:
        if not exited and proc.poll() is not None:
            exited.append(time.monotonic())
        return bool(exited) and time.monotonic() - exited[0] >= grace_s

    return stop


def _packets_in_kafka(bootstrap: str, codec: AvroCodec, start: dict[tuple[str, int], int], source: str) -> int:
    """The packets of ``source``'s batches in wire.packets since ``start``, read back from
    the broker (its end-of-input batch is the last of each partition)."""
    ends, total = set(), 0
    with TopicReader(bootstrap, codec, [PACKETS], start=start,
                     fields={PACKETS: frozenset({"source_id", "count", "end_of_input"})}) as reader:
        deadline = time.monotonic() + 60
        while len(ends) < 4 and time.monotonic() < deadline:
            for msg in reader.poll(0.5, 10_000):
                if msg.record is not None and msg.record["source_id"] == source:
                    total += msg.record["count"]
                    if msg.record["end_of_input"]:
                        ends.add(msg.partition)
    return total


def bench_dumpcap(link: Link, rate: int, seconds: float, workdir: str, sender: str | None) -> dict:
    path = os.path.join(workdir, "dumpcap.pcapng")
    cap = link.exec(link.snd, ["dumpcap", "-i", link.snd_if, "-w", path, "-q", "-B", "32"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # dumpcap prints nothing when it is ready
    server, client = _traffic(link, rate, seconds, sender)
    sent, took = _sent_datagrams(client, server, sender)
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
            "cpu_s": cpu, "us_per_packet": cpu / max(1, frames) * 1e6, "pps": sent / took}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="100000,200000,400000", help="packets/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=8.0, help="traffic per rate (default: %(default)s)")
    parser.add_argument("--mode", default="ebpf", choices=("ebpf", "af_packet"))
    parser.add_argument("--no-dumpcap", action="store_true")
    parser.add_argument("--sender", default="sendmmsg", choices=("sendmmsg", "iperf3"),
                        help="what sends the datagrams: bench/udp_sender.c (batches of 32 by sendmmsg, "
                             "compiled here; reaches 200,000+ packets/s) or iperf3 (one sendto each: "
                             "~90,000 packets/s at most on 2 cores) (default: %(default)s)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_capture: needs root (network namespaces, packet sockets, eBPF)")
    needed = ("ethtool",) + (("iperf3",) if args.sender == "iperf3" else ()) + (() if args.no_dumpcap else ("dumpcap",))
    for tool in needed:
        if shutil.which(tool) is None:
            sys.exit(f"bench_capture: {tool} is not installed (scripts/install --test)")
    rows = []
    with EmbeddedBroker() as broker, EmbeddedSchemaRegistry() as registry, Link() as link, \
            tempfile.TemporaryDirectory() as workdir:
        sender = _compile_sender(workdir) if args.sender == "sendmmsg" else None
        ensure_topics(broker.bootstrap, ALL_TOPICS, 4)
        codec = AvroCodec(registry.url)
        codec.register(PACKETS)
        for rate in (int(r) for r in args.rates.split(",")):
            rows.append(bench_wirestream(link, broker.bootstrap, broker.pid, codec, rate, args.seconds, args.mode,
                                         sender))
            print(_row(rows[-1]), flush=True)
            if not args.no_dumpcap:
                rows.append(bench_dumpcap(link, rate, args.seconds, workdir, sender))
                print(_row(rows[-1]), flush=True)
    print()
    # no loss: nothing dropped by the ring, and every datagram iperf3 sent was captured
    # (and every datagram sent is in Kafka: all that was published, read back from the broker)
    ok = [r for r in rows if r["tool"].startswith("wirestream") and r["lost"] == 0 and r["frames"] >= r["sent"]
          and r["in_kafka"] == r["published"] >= r["sent"]]
    best = max((r["pps"] for r in ok), default=0)
    # met: a rate of at least 50k asked, sent (iperf3 kept up, within 1 %), and captured whole
    # met: 200k or more actually sent (not only asked) and captured whole
    met = any(r["pps"] >= 200_000 for r in ok)
    print(f"wirestream: highest rate sustained with no loss {best:,.0f} packets/s (target 200,000 "
          f"per core): {'MET' if met else 'NOT MET (see the sent rates: the sender may be the limit)'}")
    if ok:
        cpu = max(r["us_per_packet"] for r in ok)
        print(f"wirestream: CPU per packet up to {cpu:.2f} µs: one core's capacity ~{1e6 / cpu:,.0f} "
              "packets/s (derived, not sent)")
    return 0


def _row(r: dict) -> str:
    # iperf3 sends what it can: on a small machine it shares the CPU with the capture, so
    # the rate achieved ("sent") can be below the rate asked for.
    line = (f"{r['tool']:<22} asked {r['rate']:>7,} pkt/s, sent {r['pps']:>7,.0f} pkt/s: "
            f"{r['sent']:>9,} sent, {r['frames']:>9,} captured (+ control traffic: ARP, iperf3's TCP), "
            f"lost {r['lost']:>5,}; CPU {r['cpu_s']:5.2f} s = {r['us_per_packet']:5.2f} µs/packet")
    if "in_kafka" in r:
        line += f"; {r['in_kafka']:,} in wire.packets, broker {r['broker_us_per_packet']:.2f} µs/packet"
        if r["not_published"]:
            line += f"; not published (named): {r['not_published']}"
    return line


if __name__ == "__main__":
    sys.exit(main())

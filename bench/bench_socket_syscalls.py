#!/usr/bin/env python3
"""Per-call cost of the data-syscall tracepoints of ``bpf/socket_events.c``.

``SocketEventSource`` attaches programs to sys_enter/exit of write, writev, sendto,
sendmsg, read, readv, recvfrom and recvmsg for the whole machine: at entry one hash
lookup in ``socket_fds`` decides whether the fd is a socket seen connected or accepted
(then the call is remembered in ``io_calls``); at exit the counts are added into
``io_stats``. So every read and write of the machine pays the lookup, and calls on
tracked sockets pay more. This bench measures both, in one run:

1. Cost in the kernel, from the kernel's own BPF statistics (sysctl
   kernel.bpf_stats_enabled, on while they are read and restored after): ns per run of
   the enter and exit programs of write and read, for (a) untracked fds: ``--calls``
   1-byte writes to /dev/null, then as many 1-byte reads from /dev/zero; (b) a tracked
   TCP socket on loopback, connected after the programs were loaded: a writer process
   makes ``--calls`` writes of ``--size`` bytes, a reader process reads them until EOF.
   Each workload is run alone, so the statistics' deltas separate them. The programs
   run for every such syscall of the machine, other processes' too: ``runs`` says how
   many ran, and the tracked rows' "per tracked call" figure takes the runs beyond the
   workload's own calls out at the untracked rate.
2. Added wall time per syscall: the same loops (a small C program, compiled here with
   gcc into a temporary folder, times its own loop with CLOCK_MONOTONIC) in four states,
   ``--rounds`` rounds in alternating order: "without" any program; "empty": programs
   that return 0 on the same four tracepoints (the floor any syscall tracepoint program
   pays); "with" ``SocketEventSource`` loaded, statistics off; "with+stats", the state
   item 1 reads (the statistics' two clock reads per run show in its wall time). Each
   state loads its programs afresh and unloads them after. Medians, and with - without.
   The tracked loop's wall time includes loopback TCP itself and a reader on the other
   core, so its difference is noisier than the untracked ones'.
3. Checked as it goes: in every round with the programs loaded, ``io_table()`` holds
   exactly the writer's calls and bytes on the writer's fd (send_calls == calls,
   send_bytes == calls * size) and the reader's on its fd (recv_calls and recv_bytes as
   the reader counted them); "CHECK OK", or "CHECK FAILED" and exit status 1.

No tshark comparison applies: tshark captures packets and traces no syscalls.
Needs root, bcc, gcc and the syscall tracepoints (CONFIG_FTRACE_SYSCALLS). Traffic
only on loopback.

    sudo .venv/bin/python bench/bench_socket_syscalls.py                          # 500,000 calls, 5 rounds
    sudo .venv/bin/python bench/bench_socket_syscalls.py [--calls N] [--rounds R] [--size B]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from wirestream.producers.packet_drops import prog_run_stats
from wirestream.producers.socket_events import SocketEventSource

from wirestream.doctor import kernel_headers, load_bcc

BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
#: the programs whose statistics are reported (the workloads make only write and read calls)
PROGRAMS = ("sys_enter_write", "sys_exit_write", "sys_enter_read", "sys_exit_read")

# One binary, four modes. Each loop is timed by the program itself, so process start and
# the pipes to this script are not in the figures.
#   null N          N write(2) of 1 byte to /dev/null            -> "ns"
#   zero N          N read(2) of 1 byte from /dev/zero           -> "ns"
#   recv            listen on 127.0.0.1, print the port; accept (with an address: the
#                   accept tracepoint tracks only those), read(2) until EOF
#                                                                -> "pid fd calls bytes"
#   send PORT N B   connect, N write(2) of B bytes               -> "pid fd ns bytes"
# recv and send then keep the socket open until a line on stdin: closing it deletes its
# io_stats row, which the check reads first.
LOOP_C = r"""
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void die(const char *what) { perror(what); exit(2); }

static void wait_line(void) {
    char line[16];
    if (!fgets(line, sizeof(line), stdin)) { /* EOF: the bench is gone; close anyway */ }
}

int main(int argc, char **argv) {
    static char buf[65536];
    if (argc < 2) return 2;
    if (!strcmp(argv[1], "null") || !strcmp(argv[1], "zero")) {
        int writing = argv[1][0] == 'n';
        long n = atol(argv[2]);
        int fd = open(writing ? "/dev/null" : "/dev/zero", writing ? O_WRONLY : O_RDONLY);
        if (fd < 0) die("open");
        long long t0 = now_ns();
        for (long i = 0; i < n; i++)
            if ((writing ? write(fd, "x", 1) : read(fd, buf, 1)) != 1) die("io");
        printf("%lld\n", now_ns() - t0);
        return 0;
    }
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (!strcmp(argv[1], "recv")) {
        int l = socket(AF_INET, SOCK_STREAM, 0);
        socklen_t len = sizeof(sa);
        if (l < 0 || bind(l, (struct sockaddr *)&sa, sizeof(sa)) || listen(l, 1)) die("listen");
        if (getsockname(l, (struct sockaddr *)&sa, &len)) die("getsockname");
        printf("%d\n", ntohs(sa.sin_port));
        fflush(stdout);
        struct sockaddr_in peer;
        len = sizeof(peer);
        int c = accept(l, (struct sockaddr *)&peer, &len);
        if (c < 0) die("accept");
        long calls = 0;
        long long bytes = 0;
        for (;;) {
            ssize_t got = read(c, buf, sizeof(buf));
            calls++;
            if (got < 0) die("read");
            if (got == 0) break;
            bytes += got;
        }
        printf("%d %d %ld %lld\n", getpid(), c, calls, bytes);
        fflush(stdout);
        wait_line();
        close(c);
        return 0;
    }
    if (!strcmp(argv[1], "send")) {
        sa.sin_port = htons(atoi(argv[2]));
        long n = atol(argv[3]);
        size_t size = atol(argv[4]);
        if (size > sizeof(buf)) return 2;
        memset(buf, 'x', size);
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (s < 0 || connect(s, (struct sockaddr *)&sa, sizeof(sa))) die("connect");
        long long bytes = 0;
        long long t0 = now_ns();
        for (long i = 0; i < n; i++) {
            ssize_t put = write(s, buf, size);
            if (put <= 0) die("write");
            bytes += put;
        }
        long long spent = now_ns() - t0;
        shutdown(s, SHUT_WR);  /* the reader's EOF; the fd stays open for the check */
        printf("%d %d %lld %lld\n", getpid(), s, spent, bytes);
        fflush(stdout);
        wait_line();
        close(s);
        return 0;
    }
    return 2;
}
"""


def build(folder: Path) -> Path:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise SystemExit("bench_socket_syscalls: no C compiler (apt-get install gcc)")
    src, exe = folder / "loop.c", folder / "loop"
    src.write_text(LOOP_C)
    subprocess.run([gcc, "-O2", "-o", str(exe), str(src)], check=True)
    return exe


Stats = dict[str, tuple[int, int]]


def stats_reader(source: SocketEventSource | None) -> Callable[[], Stats]:
    """A function giving (runs, ns) of each of PROGRAMS now (an empty dict without programs)."""
    if source is None:
        return dict
    fds = {name: source.bpf.funcs[f"tracepoint__syscalls__{name}".encode()].fd for name in PROGRAMS}

    def read() -> Stats:
        out = {}
        for name, fd in fds.items():
            got = prog_run_stats(fd)
            if got is None:
                raise SystemExit("bench_socket_syscalls: the kernel gives no BPF run statistics here")
            out[name] = got
        return out

    return read


def delta(before: Stats, after: Stats) -> Stats:
    return {k: (after[k][0] - before[k][0], after[k][1] - before[k][1]) for k in after}


def run_loop(exe: Path, mode: str, calls: int) -> int:
    """ns the program's loop took."""
    out = subprocess.run([str(exe), mode, str(calls)], check=True, capture_output=True, text=True, timeout=600)
    return int(out.stdout)


def run_tcp(exe: Path, calls: int, size: int, source: SocketEventSource | None) -> tuple[int, int, list[str]]:
    """ns of the writer's loop, the reader's read calls, and the failed checks."""
    reader = subprocess.Popen([str(exe), "recv"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    writer = None
    try:
        port = int(reader.stdout.readline())  # type: ignore[union-attr]
        writer = subprocess.Popen([str(exe), "send", str(port), str(calls), str(size)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        w_pid, w_fd, spent, w_bytes = map(int, writer.stdout.readline().split())  # type: ignore[union-attr]
        r_pid, r_fd, r_calls, r_bytes = map(int, reader.stdout.readline().split())  # type: ignore[union-attr]
        failed = []
        if w_bytes != calls * size or r_bytes != w_bytes:
            failed.append(f"the workload itself: writer put {w_bytes} bytes, reader got {r_bytes}, "
                          f"expected {calls * size}")
        if source is not None:
            # both sockets are still open (the programs' rows live until close)
            table = dict(source.io_table())
            # IO_STRUCT: skaddr, cgroup_id, send_bytes, recv_bytes, send_ns, recv_ns, send_calls, recv_calls
            w = table.get((w_pid << 32) | w_fd)
            r = table.get((r_pid << 32) | r_fd)
            if w is None:
                failed.append(f"io_table has no row for the writer (pid {w_pid} fd {w_fd})")
            elif (w[6], w[2], w[7], w[3]) != (calls, calls * size, 0, 0):
                failed.append(f"writer pid {w_pid} fd {w_fd}: io_table send_calls={w[6]} send_bytes={w[2]} "
                              f"recv_calls={w[7]} recv_bytes={w[3]}, expected {calls} / {calls * size} / 0 / 0")
            if r is None:
                failed.append(f"io_table has no row for the reader (pid {r_pid} fd {r_fd})")
            elif (r[7], r[3], r[6], r[2]) != (r_calls, r_bytes, 0, 0):
                failed.append(f"reader pid {r_pid} fd {r_fd}: io_table recv_calls={r[7]} recv_bytes={r[3]} "
                              f"send_calls={r[6]} send_bytes={r[2]}, expected {r_calls} / {r_bytes} / 0 / 0")
        return spent, r_calls, failed
    finally:
        for proc in (writer, reader):
            if proc is None:
                continue
            try:
                proc.communicate("close\n", timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def ns_per_run(runs: int, ns: int) -> float:
    return ns / runs if runs else float("nan")


STATES = ("without", "empty", "with", "with+stats")
#: the floor: programs that do nothing on the same four tracepoints (what any syscall
#: tracepoint program costs: the tracepoint's slow path and the program call)
EMPTY = b"""
TRACEPOINT_PROBE(syscalls, sys_enter_write) { return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_write) { return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_read) { return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_read) { return 0; }
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=500_000, help="syscalls per loop (500,000)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of the four states, in alternating order (5)")
    ap.add_argument("--size", type=int, default=64, help="bytes per write on the TCP socket (64)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_socket_syscalls: needs root (BPF programs, sysctl kernel.bpf_stats_enabled)")
    kernel_headers()
    bcc = load_bcc()
    calls, size, rounds = args.calls, args.size, args.rounds
    workloads = ("null", "zero", "tcp")
    wall: dict[tuple[str, str], list[float]] = {(w, st): [] for w in workloads for st in STATES}
    # (workload, program) -> [runs, ns], summed over the rounds with the statistics on
    kernel: dict[tuple[str, str], list[int]] = {(w, p): [0, 0] for w in workloads for p in PROGRAMS}
    reader_calls = 0
    failures: list[str] = []
    print(f"kernel {platform.release()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; "
          f"{calls:,} calls per loop, {size}-byte TCP writes, {rounds} rounds")
    was = BPF_STATS.read_text().strip()
    try:
        with tempfile.TemporaryDirectory(prefix="bench_socket_syscalls-") as tmp:
            exe = build(Path(tmp))
            for rnd in range(rounds):
                # alternate the order of the states, so a drift in the machine's load hits all
                for state in (STATES if rnd % 2 == 0 else STATES[::-1]):
                    # the statistics cost two clock reads per program run: on only where read
                    BPF_STATS.write_text("1" if state == "with+stats" else "0")
                    source = SocketEventSource(bcc) if state in ("with", "with+stats") else None
                    empty = bcc.BPF(text=EMPTY) if state == "empty" else None
                    try:
                        if source is not None and not source.syscalls:
                            raise SystemExit("bench_socket_syscalls: this kernel has no syscall "
                                             "tracepoints (CONFIG_FTRACE_SYSCALLS)")
                        stats = stats_reader(source if state == "with+stats" else None)
                        for w in workloads:
                            before = stats()
                            if w == "tcp":
                                spent, r_calls, failed = run_tcp(exe, calls, size, source)
                                failures += [f"round {rnd + 1}, {state}: {f}" for f in failed]
                                if state == "with+stats":
                                    reader_calls += r_calls
                            else:
                                spent = run_loop(exe, w, calls)
                            for prog, (runs, ns) in delta(before, stats()).items():
                                kernel[w, prog][0] += runs
                                kernel[w, prog][1] += ns
                            wall[w, state].append(spent / calls)
                    finally:
                        if source is not None:
                            source.close()
                        if empty is not None:
                            empty.cleanup()
                print(f"round {rnd + 1} (ns per call, {' / '.join(STATES)}): " + "  ".join(
                    f"{w} " + "/".join(f"{wall[w, st][-1]:.0f}" for st in STATES) for w in workloads)
                    + f"  load {os.getloadavg()[0]:.2f}", flush=True)
    finally:
        BPF_STATS.write_text(was)

    print()
    print("1. In the kernel (BPF statistics), summed over the rounds with the programs loaded")
    print(f"{'workload':<30} {'program':<16} {'runs':>11} {'its calls':>11} {'ns/run':>7} {'per tracked call':>17}")
    untracked_rate = {}
    for w, label, prog_names, own in (
            ("null", "untracked: write /dev/null", ("sys_enter_write", "sys_exit_write"), calls * rounds),
            ("zero", "untracked: read /dev/zero", ("sys_enter_read", "sys_exit_read"), calls * rounds),
            ("tcp", f"tracked TCP: write {size} B", ("sys_enter_write", "sys_exit_write"), calls * rounds),
            ("tcp", "tracked TCP: read (reader)", ("sys_enter_read", "sys_exit_read"), reader_calls)):
        for prog in prog_names:
            runs, ns = kernel[w, prog]
            rate = ns_per_run(runs, ns)
            extra = ""
            if w != "tcp":
                untracked_rate[prog] = rate
            elif own:
                # the runs beyond the workload's own calls were other processes' (untracked,
                # nearly all): take them out at the untracked rate measured above
                other = max(runs - own, 0)
                extra = f"{(ns - other * untracked_rate[prog]) / own:.1f}"
            print(f"{label:<30} {prog:<16} {runs:>11,} {own:>11,} {rate:>7.1f} {extra:>17}")
    print()
    print(f"2. Wall time per syscall, median of {rounds} rounds (the loops' own clock); "
          "added = with - without")
    print(f"{'loop':<36} {'without':>9} {'empty':>9} {'with':>9} {'added':>9} {'added %':>8} "
          f"{'with+stats':>11}")
    for w, label in (("null", "write(2) 1 B to /dev/null"), ("zero", "read(2) 1 B from /dev/zero"),
                     ("tcp", f"write(2) {size} B, tracked TCP socket")):
        off, floor, on, on_stats = (statistics.median(wall[w, st]) for st in STATES)
        print(f"{label:<36} {off:>6.0f} ns {floor:>6.0f} ns {on:>6.0f} ns {on - off:>6.0f} ns "
              f"{100 * (on - off) / off:>7.1f}% {on_stats:>8.0f} ns")
    print()
    if failures:
        for f in failures:
            print(f"CHECK FAILED: {f}")
        return 1
    print(f"CHECK OK: in each of {2 * rounds} runs with the programs, io_table() held the writer's "
          f"{calls:,} calls and {calls * size:,} bytes on its fd, and the reader's calls and bytes on its own")
    return 0


if __name__ == "__main__":
    start = time.monotonic()
    status = main()
    print(f"({time.monotonic() - start:.0f} s)")
    sys.exit(status)

"""A lossy link between two private network namespaces, for captures the tests record themselves.

:class:`LossyLink` creates two namespaces (``sender`` and ``receiver``, unique names) joined
by a veth pair with addresses in a random 10.200.x.0/30 that exists only inside them, turns
segmentation/receive offloads off on both veth ends (so every TCP segment is one packet on
the wire, and the kernel's segment counters match packet counts), and drops
``loss_percent`` % of the TCP packets going from the sender to the receiver.

Where the loss is, and where to capture
---------------------------------------
The drop is an nftables rule in the *receiver* namespace, at its ``prerouting`` hook
(``numgen random mod 100 < N drop``), i.e. after the packet has crossed the veth. Capture on
the *sender's* veth (:meth:`LossyLink.capture`): that tap sees every segment the sender
transmits, the ones later dropped included, so each kernel retransmission shows up on the
wire after its original, and Wireshark's ``tcp.analysis.retransmission`` can equal the
sender's ``RetransSegs``. Dropping in the sender's own ``output``/``postrouting`` hook would
not do: those run before the device's tap, so a dropped original would never reach the
capture and its retransmission would look like new data.

Only the sender-to-receiver direction is lossy (data, the sender's ACKs, SYN, FIN). The
receiver can still retransmit (e.g. its FIN, when the sender's last ACK is dropped); its
own ``RetransSegs`` counts those, and they are on the capture too.

Shaping
-------
``rate_mbit`` (default 25) puts a token bucket (``tbf``, burst of one 1514-byte frame) on
the sender's veth, so frames leave one by one at that rate, as from a real NIC, instead of
back to back. The qdisc sits before the capture's tap, so its queue is made large enough
never to drop (:meth:`LossyLink.qdisc_drops` checks). Why it matters for Wireshark's
out-of-order heuristic: see tests/test_loss_netns.py. ``rate_mbit=None``: a bare veth.

Everything is removed on exit, also when the body raises. Root, ``ip netns``, ``nft``,
``tc``, ``ethtool``, ``ss`` and ``tcpdump`` needed (:func:`netns_available` says what is
missing).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import textwrap
import time
from collections.abc import Sequence

IP = shutil.which("ip") or "/usr/sbin/ip"
NFT = shutil.which("nft") or "/usr/sbin/nft"
ETHTOOL = shutil.which("ethtool")
TCPDUMP = shutil.which("tcpdump")
TC = shutil.which("tc") or "/usr/sbin/tc"

OFFLOADS = ("tso", "gso", "gro", "lro")


# Receiver: per connection, read a request line, answer RESPONSE_BYTES, then count the bulk
# data until EOF, reply with the count and close.
BULK_SERVER = textwrap.dedent("""
    import socket, sys
    host, port, n, response = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    srv = socket.socket()
    srv.bind((host, port))
    srv.listen(8)
    srv.settimeout(30)
    print("ready", flush=True)
    for _ in range(n):
        c, _ = srv.accept()
        c.settimeout(20)
        f = c.makefile("rb")
        f.readline()
        c.sendall(b"r" * response)
        total = 0
        while chunk := f.read1(65536):
            total += len(chunk)
        c.sendall(b"ok %d\\n" % total)
        f.close()
        c.close()
""")

# Sender: per connection, request, read the response, send the bulk data, half-close and
# check the receiver's count.
BULK_CLIENT = textwrap.dedent("""
    import socket, sys
    host, port, n, size, response = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    data = b"d" * size
    for _ in range(n):
        c = socket.create_connection((host, port), timeout=20)
        c.sendall(b"hello\\n")
        got = 0
        while got < response:
            chunk = c.recv(65536)
            if not chunk:
                sys.exit("short response")
            got += len(chunk)
        c.sendall(data)
        c.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := c.recv(100):
            reply += chunk
        if reply != b"ok %d\\n" % size:
            sys.exit(f"receiver got {reply!r}, sent {size}")
        c.close()
    print("done", flush=True)
""")


def readline(proc: subprocess.Popen, timeout: float) -> str:
    """The next line of ``proc``'s stdout, or "" if none comes within ``timeout``."""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return ""
        return proc.stdout.readline().strip()


def netns_available() -> str | None:
    """None if namespaces can be used here, otherwise the reason why not."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, nftables, tcpdump)"
    for tool in ("ip", "nft", "tc", "ss", "ethtool", "tcpdump"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    name = f"ws-probe-{secrets.token_hex(3)}"
    try:
        r = subprocess.run([IP, "netns", "add", name], capture_output=True, text=True, timeout=10)
        if r.returncode != 0:
            return f"ip netns add failed: {r.stderr.strip()}"
    finally:
        subprocess.run([IP, "netns", "del", name], capture_output=True, timeout=10)
    return None


class Capture:
    """A running ``tcpdump``; :meth:`stop` ends it and reports its own counters."""

    def __init__(self, proc: subprocess.Popen, path: str) -> None:
        self.proc = proc
        self.path = path
        self.stderr = ""
        self.dropped_by_kernel: int | None = None
        self.captured: int | None = None
        self.received: int | None = None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        self.stderr += err or ""
        for line in self.stderr.splitlines():
            words = line.split()
            if line.endswith("packets dropped by kernel"):
                self.dropped_by_kernel = int(words[0])
            elif line.endswith("packets captured"):
                self.captured = int(words[0])
            elif line.endswith("packets received by filter"):
                self.received = int(words[0])


class LossyLink:
    """Two namespaces joined by a veth pair; ``loss_percent`` % of sender->receiver TCP dropped.

    Attributes after ``__enter__``: ``sender``/``receiver`` (namespace names),
    ``sender_if``/``receiver_if`` (veth ends), ``sender_ip``/``receiver_ip``.
    """

    def __init__(self, loss_percent: int = 5, rate_mbit: float | None = 25,
                 burst_bytes: int = 1514, offloads: bool = False) -> None:
        """``offloads=True`` leaves TSO/GSO/GRO as the veth has them (on): the stack then
        hands the device, and the capture, super-packets of several segments."""
        if not 0 <= loss_percent <= 100:
            raise ValueError("loss_percent must be 0..100")
        self.loss_percent = loss_percent
        self.rate_mbit = rate_mbit
        self.burst_bytes = burst_bytes
        self.keep_offloads = offloads
        tag = secrets.token_hex(3)
        self.sender = f"ws-snd-{tag}"
        self.receiver = f"ws-rcv-{tag}"
        self.sender_if = f"wss{tag}"  # <= 15 characters
        self.receiver_if = f"wsr{tag}"
        net = secrets.randbelow(256)
        self.sender_ip = f"10.200.{net}.1"
        self.receiver_ip = f"10.200.{net}.2"
        self._namespaces: list[str] = []
        self.offloads: dict[str, dict[str, bool]] = {}  # veth -> feature -> is off
        self._procs: list[subprocess.Popen] = []

    # --- setup / teardown -----------------------------------------------------------------

    def __enter__(self) -> LossyLink:
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _setup(self) -> None:
        for ns in (self.sender, self.receiver):
            _check([IP, "netns", "add", ns])
            self._namespaces.append(ns)
            # IPv4 only: no IPv6 autoconfiguration chatter on the capture.
            for conf in ("all", "default"):
                with contextlib.suppress(Exception):
                    self.run(ns, ["sh", "-c", f"echo 1 > /proc/sys/net/ipv6/conf/{conf}/disable_ipv6"])
        # Created inside the sender namespace, the peer moved straight into the receiver's:
        # the pair never exists in the caller's namespace.
        _check([IP, "-n", self.sender, "link", "add", self.sender_if, "type", "veth",
                "peer", "name", self.receiver_if, "netns", self.receiver])
        for ns, dev, addr in ((self.sender, self.sender_if, self.sender_ip),
                              (self.receiver, self.receiver_if, self.receiver_ip)):
            _check([IP, "-n", ns, "link", "set", "lo", "up"])
            _check([IP, "-n", ns, "addr", "add", f"{addr}/30", "dev", dev])
            if not self.keep_offloads:
                self.offloads[dev] = self.offloads_off(ns, dev)
            _check([IP, "-n", ns, "link", "set", dev, "up"])
        rules = f"""
table inet wirestream_loss {{
    chain prerouting {{
        type filter hook prerouting priority raw; policy accept;
        iifname "{self.receiver_if}" ip saddr {self.sender_ip} meta l4proto tcp numgen random mod 100 < {self.loss_percent} counter drop
    }}
}}
"""
        if self.rate_mbit:
            # Queue generously (a drop in this qdisc would be before the capture's tap).
            _check([IP, "netns", "exec", self.sender, TC, "qdisc", "add", "dev", self.sender_if,
                    "root", "tbf", "rate", f"{self.rate_mbit}mbit", "burst", str(self.burst_bytes),
                    "limit", "8000000"])
        if self.loss_percent:
            subprocess.run([IP, "netns", "exec", self.receiver, NFT, "-f", "-"], input=rules,
                           text=True, capture_output=True, check=True, timeout=10)
        self._wait_link_up()

    def offloads_off(self, ns: str, dev: str) -> dict[str, bool]:
        """``ethtool -K dev tso off gso off gro off lro off``, one feature at a time, so that a
        feature the device cannot change (``lro [fixed]`` on veth) does not stop the others.
        Returns feature -> whether it is now off."""
        result = {}
        if ETHTOOL is None:
            return dict.fromkeys(OFFLOADS, False)
        for feature in OFFLOADS:
            subprocess.run([IP, "netns", "exec", ns, ETHTOOL, "-K", dev, feature, "off"],
                           capture_output=True, timeout=10)
        shown = self.run(ns, [ETHTOOL, "-k", dev]).stdout
        long_names = {"tso": "tcp-segmentation-offload", "gso": "generic-segmentation-offload",
                      "gro": "generic-receive-offload", "lro": "large-receive-offload"}
        for feature, name in long_names.items():
            line = next((ln for ln in shown.splitlines() if ln.strip().startswith(name + ":")), "")
            result[feature] = " off" in line
        return result

    def _wait_link_up(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            up = all("LOWER_UP" in self.run(ns, [IP, "link", "show", dev]).stdout
                     for ns, dev in ((self.sender, self.sender_if), (self.receiver, self.receiver_if)))
            if up:
                return
            time.sleep(0.02)
        raise RuntimeError("veth link did not come up")

    def close(self) -> None:
        """Stop what :meth:`popen` started, then delete the namespaces (and with them the veth
        pair and the nftables table)."""
        for p in self._procs:
            if p.poll() is None:
                p.kill()
            with contextlib.suppress(Exception):
                p.communicate(timeout=5)
        self._procs.clear()
        for ns in reversed(self._namespaces):
            subprocess.run([IP, "netns", "del", ns], capture_output=True, timeout=10)
        self._namespaces.clear()

    # --- helpers ----------------------------------------------------------------------------

    def run(self, ns: str, cmd: Sequence[str], check: bool = True, timeout: float = 30,
            **kwargs: object) -> subprocess.CompletedProcess:
        """Run ``cmd`` inside namespace ``ns`` and wait for it (text output captured)."""
        return subprocess.run([IP, "netns", "exec", ns, *cmd], capture_output=True, text=True,
                              check=check, timeout=timeout, **kwargs)

    def popen(self, ns: str, cmd: Sequence[str], **kwargs: object) -> subprocess.Popen:
        """Start ``cmd`` inside namespace ``ns``; killed by :meth:`close` if still running.
        (``ip netns exec`` execs the command, so the pid is the command's own.)"""
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        p = subprocess.Popen([IP, "netns", "exec", ns, *cmd], **kwargs)
        self._procs.append(p)
        return p

    def snmp(self, ns: str, group: str = "Tcp") -> dict[str, int]:
        """One group of ``/proc/net/snmp`` as seen inside ``ns`` (the MIBs are per namespace)."""
        lines = [ln.split() for ln in self.run(ns, ["cat", "/proc/net/snmp"]).stdout.splitlines()
                 if ln.startswith(group + ":")]
        names, values = lines[0][1:], lines[1][1:]
        return {n: int(v) for n, v in zip(names, values, strict=True)}

    def snmp_retrans_segs(self, ns: str) -> int:
        """``Tcp: RetransSegs`` of namespace ``ns``: segments its TCP stack retransmitted."""
        return self.snmp(ns)["RetransSegs"]

    def nft_dropped(self) -> int:
        """Packets the loss rule has dropped so far."""
        if not self.loss_percent:
            return 0
        out = self.run(self.receiver, [NFT, "list", "table", "inet", "wirestream_loss"]).stdout
        for line in out.splitlines():
            words = line.split()
            if "counter" in words and "drop" in words:
                return int(words[words.index("packets") + 1])
        return 0

    def qdisc_drops(self) -> int:
        """Packets the sender's shaping qdisc dropped (before the capture's tap): must be 0."""
        out = self.run(self.sender, [TC, "-s", "qdisc", "show", "dev", self.sender_if]).stdout
        words = out.replace(",", " ").split()
        return sum(int(words[i + 1]) for i, w in enumerate(words) if w == "dropped")

    def tcp_sockets(self, ns: str) -> list[str]:
        """States of the TCP sockets in ``ns`` other than LISTEN and TIME-WAIT (``ss``)."""
        out = self.run(ns, ["ss", "-Htan"]).stdout
        return [ln.split()[0] for ln in out.splitlines()
                if ln.split() and ln.split()[0] not in ("LISTEN", "TIME-WAIT")]

    def capture(self, ns: str, iface: str, path: str, timeout: float = 10.0,
                buffer_kib: int = 65536, nanoseconds: bool = False) -> Capture:
        """Start ``tcpdump -i iface -w path -s 0 -U`` in ``ns``; return once it is listening.
        Stop it with :meth:`Capture.stop` (SIGINT, then its ``dropped by kernel`` figure).

        ``--immediate-mode``: without it, packets still in the kernel's ring buffer block
        when tcpdump gets SIGINT are lost (the last packets of the capture, e.g. the FINs),
        and not counted as dropped."""
        cmd = [TCPDUMP, "-i", iface, "-w", path, "-s", "0", "-U", "--immediate-mode", "-n",
               "-Z", "root", "-B", str(buffer_kib)]
        if nanoseconds:
            cmd += ["--time-stamp-precision=nano"]
        p = self.popen(ns, cmd, stdout=subprocess.DEVNULL)
        cap = Capture(p, path)
        sel = selectors.DefaultSelector()
        sel.register(p.stderr, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        try:
            while "listening on" not in cap.stderr:
                left = deadline - time.monotonic()
                if left <= 0 or p.poll() is not None:
                    cap.stop()
                    raise RuntimeError(f"tcpdump did not start: {cap.stderr.strip()}")
                if sel.select(left):
                    line = p.stderr.readline()
                    cap.stderr += line
        finally:
            sel.close()
        return cap


def _check(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")


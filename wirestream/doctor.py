"""``wirestream doctor``: what this machine offers for live capture, and why not.

Live capture (issue 6) has two paths: eBPF through bcc (packets and socket/TCP
tracepoints with process identity) and plain AF_PACKET (packets only). Each needs
something of the kernel, the packages and the privileges; this module checks every
requirement separately and says, in one line each, what is missing and how to fix it.

Facts about bcc on these machines (docs/capture.md, scripts/bcc-headers): Debian's ``python3-bpfcc`` is pure
Python over ``libbcc``, installed for Debian's own Python, so it is loaded here from its
directory without putting the rest of Debian's dist-packages on the path; it compiles
programs with kernel headers (``BCC_KERNEL_SOURCE`` or ``/lib/modules/$(uname -r)/build``)
even when BTF is present; tracepoint programs need tracefs mounted.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

DEBIAN_BCC = Path("/usr/lib/python3/dist-packages/bcc")
TRACEFS = Path("/sys/kernel/tracing")
#: the tracepoints socket events are read from (the syscall ones are optional: without
#: them there are no connect/accept/close events, no server process and no data-syscall
#: counts; bpf/socket_events.c attaches all of them or none)
TRACEPOINTS = ("sock/inet_sock_set_state", "tcp/tcp_retransmit_skb", "tcp/tcp_retransmit_synack")
#: the data syscalls counted per socket (client_syscalls/server_syscalls)
DATA_SYSCALLS = ("write", "writev", "sendto", "sendmsg", "read", "readv", "recvfrom", "recvmsg")
SYSCALL_TRACEPOINTS = tuple(f"syscalls/{name}" for name in (
    "sys_enter_connect", "sys_exit_connect", "sys_enter_accept4", "sys_exit_accept4",
    "sys_enter_accept", "sys_exit_accept", "sys_enter_close")) + tuple(
    f"syscalls/sys_{edge}_{call}" for call in DATA_SYSCALLS for edge in ("enter", "exit"))
#: where scripts/bcc-headers puts a merged header tree
HEADERS_DIR = Path("/var/lib/wirestream/kernel-headers")
BTF = Path("/sys/kernel/btf/vmlinux")

#: Linux capability numbers (include/uapi/linux/capability.h)
CAPABILITIES = {"CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_SYS_ADMIN": 21, "CAP_PERFMON": 38,
                "CAP_BPF": 39}


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    ebpf: bool = False
    ebpf_reason: str = ""
    socket_events: bool = False
    socket_events_reason: str = ""
    af_packet: bool = False
    af_packet_reason: str = ""
    drops: bool = False
    drops_reason: str = ""
    tls_plaintext: bool = False
    tls_plaintext_reason: str = ""

    def add(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(name, ok, detail))
        return ok

    def as_dict(self) -> dict[str, object]:
        return {
            "checks": [c.__dict__ for c in self.checks],
            "capture_modes": {
                "ebpf_packets": {"available": self.ebpf, "reason": self.ebpf_reason},
                "ebpf_socket_events": {"available": self.socket_events, "reason": self.socket_events_reason},
                "af_packet": {"available": self.af_packet, "reason": self.af_packet_reason},
                "ebpf_drops": {"available": self.drops, "reason": self.drops_reason},
                "ebpf_tls_plaintext": {"available": self.tls_plaintext, "reason": self.tls_plaintext_reason},
            },
        }


def load_bcc() -> ModuleType:
    """Import bcc: the installed one if this Python has it, else Debian's, from its own
    directory only. Raises ImportError saying which package to install."""
    try:
        import bcc  # type: ignore[import-not-found]

        return bcc  # type: ignore[no-any-return]
    except ImportError:
        pass
    init = DEBIAN_BCC / "__init__.py"
    if not init.exists():
        raise ImportError("bcc is not installed (Debian: apt-get install python3-bpfcc bpfcc-tools)")
    spec = importlib.util.spec_from_file_location("bcc", init, submodule_search_locations=[str(DEBIAN_BCC)])
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load bcc from {DEBIAN_BCC}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bcc"] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # libbcc.so missing, ABI mismatch: any reason is a reason
        del sys.modules["bcc"]
        raise ImportError(f"bcc from {DEBIAN_BCC} does not load: {exc}") from None
    return module


def kernel_headers() -> Path | None:
    """The kernel header tree bcc will compile against, if there is one:
    ``BCC_KERNEL_SOURCE``, the running kernel's build tree, or the tree
    ``scripts/bcc-headers`` made (then exported as ``BCC_KERNEL_SOURCE`` for bcc)."""
    env = os.environ.get("BCC_KERNEL_SOURCE")
    if env:
        return Path(env) if (Path(env) / "include").is_dir() else None
    build = Path("/lib/modules") / platform.release() / "build"
    if (build / "include").is_dir():
        return build
    if (HEADERS_DIR / "include").is_dir():
        os.environ["BCC_KERNEL_SOURCE"] = str(HEADERS_DIR)
        return HEADERS_DIR
    return None


def effective_capabilities() -> set[str]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                bits = int(line.split()[1], 16)
                return {name for name, bit in CAPABILITIES.items() if bits >> bit & 1}
    except OSError:
        pass
    return set()


BPF_PROBE = b"int count(struct __sk_buff *skb) { return 0; }"  # bcc wants bytes
TRACEPOINT_PROBE = b"TRACEPOINT_PROBE(sock, inet_sock_set_state) { return 0; }"
#: `wirestream produce drops`: the kfree_skb tracepoint's reason field must compile
DROPS_PROBE = b"""#include <linux/skbuff.h>
#if __has_include(<net/dropreason.h>)
#include <net/dropreason.h>
#endif
TRACEPOINT_PROBE(skb, kfree_skb) { return args->reason == 0; }"""


def _cgroup2_mount() -> Path | None:
    from wirestream.producers.socket_events import cgroup2_mount

    return cgroup2_mount()


def diagnose(probe: bool = True) -> Report:
    """Check everything; with ``probe``, also compile and load a tiny socket filter (the
    only proof that eBPF really works here; ~1 s of clang)."""
    r = Report()
    r.add("kernel", True, f"Linux {platform.release()} ({platform.machine()})")
    caps = effective_capabilities()
    privileged = r.add(
        "privileges", bool(caps & {"CAP_NET_RAW"}),
        ("effective capabilities: " + ", ".join(sorted(caps))) if caps else
        "no capabilities: run as root, or grant CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_NET_RAW")
    r.add("btf", BTF.exists(), f"{BTF} {'present' if BTF.exists() else 'absent'}")
    tracefs = (TRACEFS / "events").is_dir()
    r.add("tracefs", tracefs, f"{TRACEFS} mounted" if tracefs else
          f"{TRACEFS} not mounted (mount -t tracefs tracefs {TRACEFS}); needed for socket events")
    if tracefs:
        missing = [t for t in TRACEPOINTS if not (TRACEFS / "events" / t).is_dir()]
        tracefs = r.add("tracepoints", not missing,
                        "missing: " + ", ".join(missing) if missing else
                        ", ".join(t.replace("/", ":") for t in TRACEPOINTS))
        if tracefs:
            absent = [t for t in SYSCALL_TRACEPOINTS if not (TRACEFS / "events" / t).is_dir()]
            r.add("syscall tracepoints", not absent,
                  "connect, accept, accept4, close; data syscalls counted per socket: "
                  + ", ".join(DATA_SYSCALLS) if not absent else
                  f"missing {', '.join(absent)} (CONFIG_FTRACE_SYSCALLS): no server process, no "
                  "connect/accept/close events, no data-syscall counts")
    cgroup2 = _cgroup2_mount()
    r.add("cgroup v2", cgroup2 is not None,
          f"mounted at {cgroup2}: sock_ops counts retransmitted segments" if cgroup2 else
          "not mounted: kernel_retransmissions counts retransmitted skbs, not segments")
    try:
        bcc = load_bcc()
        have_bcc = r.add("bcc", True, f"bcc {getattr(bcc, '__version__', '?')} from {Path(bcc.__file__).parent}")
    except ImportError as exc:
        bcc = None
        have_bcc = r.add("bcc", False, str(exc))
    headers = kernel_headers()
    r.add("kernel headers", headers is not None,
          f"{headers}" if headers else
          f"none for {platform.release()}: run scripts/bcc-headers, or set BCC_KERNEL_SOURCE "
          "to a header tree (docs/capture.md)")
    ebpf_caps = bool(caps & {"CAP_BPF", "CAP_SYS_ADMIN"}) and bool(caps & {"CAP_PERFMON", "CAP_SYS_ADMIN"})
    if not have_bcc:
        r.ebpf_reason = "bcc is not installed"
    elif headers is None:
        r.ebpf_reason = "no kernel headers for bcc to compile against"
    elif not ebpf_caps:
        r.ebpf_reason = "needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)"
    elif probe and bcc is not None:
        try:
            b = bcc.BPF(text=BPF_PROBE)
            b.load_func(b"count", bcc.BPF.SOCKET_FILTER)
            b.cleanup()
            r.add("ebpf probe", True, "compiled and loaded a socket filter")
        except Exception as exc:
            r.add("ebpf probe", False, f"a socket filter does not load: {str(exc).splitlines()[0]}")
            r.ebpf_reason = "a socket filter does not compile or load"
    r.ebpf = not r.ebpf_reason
    if r.ebpf and not tracefs:
        r.socket_events_reason = "tracefs is not mounted, or lacks the socket tracepoints"
    elif not r.ebpf:
        r.socket_events_reason = r.ebpf_reason
    if r.ebpf and tracefs and probe and bcc is not None:
        try:
            b = bcc.BPF(text=TRACEPOINT_PROBE)  # attaches as it loads
            b.cleanup()
            r.add("tracepoint probe", True, "compiled and attached a sock:inet_sock_set_state program")
        except Exception as exc:
            r.add("tracepoint probe", False, f"a tracepoint program does not load: {str(exc).splitlines()[0]}")
            r.socket_events_reason = "a tracepoint program does not compile or attach"
            tracefs = False
    r.socket_events = r.ebpf and tracefs
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(3))
        s.close()
        r.af_packet = r.add("af_packet", True, "a raw packet socket opens")
    except (PermissionError, OSError) as exc:
        r.add("af_packet", False, f"a raw packet socket does not open: {exc}")
        r.af_packet_reason = "needs CAP_NET_RAW" if not privileged else str(exc)
    r.add("netns tools", shutil.which("ip") is not None,
          "ip (iproute2) found" if shutil.which("ip") else "ip (iproute2) not found: no --netns capture")
    add_drop_checks(r, bcc if r.ebpf and probe else None)
    add_uprobe_checks(r, bcc if r.ebpf and probe else None)
    add_connection_checks(r)
    return r


def add_drop_checks(r: Report, bcc: ModuleType | None) -> None:
    """`wirestream produce drops`: the skb:kfree_skb tracepoint with its drop reason
    (5.17+), the kernel's BTF for the struct offsets and reason names, and what tells a
    refused packet from a dropped one (producers/packet_drops.py). With ``bcc`` (probing),
    the tracepoint program is compiled and attached, and fentry is tried."""
    from wirestream.producers.packet_drops import (
        ICMP_SEND,
        drop_reasons,
        fentry_unavailable,
        unavailable,
    )

    why = unavailable()
    if why is None:
        from wirestream.producers.btf import BTF, BTFError
        from wirestream.producers.packet_drops import kernel_offsets

        try:
            btf = BTF()
            kernel_offsets(btf)
            names = drop_reasons(btf)
            r.add("drop reasons", True, f"skb:kfree_skb with its reason; {len(names)} reasons named in this "
                  "kernel's BTF, sk_buff offsets from BTF")
        except BTFError as exc:
            why = str(exc)
    if why is not None:
        r.add("drop reasons", False, why)
    r.add("refused (icmp)", ICMP_SEND.is_dir(),
          "icmp:icmp_send: packets answered with ICMP unreachable are marked refused" if ICMP_SEND.is_dir() else
          "no icmp:icmp_send tracepoint: packets refused with ICMP count as plain drops")
    if why is None and not r.ebpf:
        why = r.ebpf_reason
    if why is None and bcc is not None:
        try:
            bcc.BPF(text=DROPS_PROBE).cleanup()  # attaches as it loads
            r.add("drops probe", True, "compiled and attached a skb:kfree_skb program reading the reason")
        except Exception as exc:
            r.add("drops probe", False, f"a kfree_skb program does not load: {str(exc).splitlines()[0]}")
            why = "a kfree_skb tracepoint program does not compile or attach"
        fentry = fentry_unavailable(bcc)
        r.add("refused (tcp reset)", fentry is None,
              "fentry on nf_send_reset: `reject with tcp reset` and ICMPv6 rejects are marked refused"
              if fentry is None else
              f"{fentry}: packets a `reject with tcp reset` rule or an IPv6 `reject` answers count as "
              "netfilter_drop, not refused")
    r.drops = why is None
    r.drops_reason = why or ""


#: `wirestream produce tls-plaintext`: a uprobe on libssl's SSL_CTX_new, which this very
#: process then calls (Python's ssl module links libssl.so.3): proof that uprobes fire here
UPROBE_PROBE = b"""BPF_ARRAY(hits, u64, 1);
int hit(struct pt_regs *ctx) { int zero = 0; u64 *n = hits.lookup(&zero); if (n) *n += 1; return 0; }"""
#: the tracepoints bpf/tls_plaintext.c finds the socket of an SSL call with
TLS_TRACEPOINTS = ("sock/sock_send_length", "sock/sock_recv_length", "tcp/tcp_probe")


def _ssl_library_of_this_process() -> Path | None:
    """The libssl.so.3 this process maps (after importing ssl), if any."""
    import ssl  # noqa: F401  (loads _ssl and with it libssl)

    try:
        for line in Path("/proc/self/maps").read_text().splitlines():
            path = line.split(maxsplit=5)[5] if len(line.split(maxsplit=5)) == 6 else ""
            if Path(path).name.startswith("libssl.so.3"):
                return Path(path)
    except OSError:
        pass
    return None


def add_uprobe_checks(r: Report, bcc: ModuleType | None) -> None:
    """`wirestream produce tls-plaintext`: libssl.so.3 found, the socket tracepoints, and,
    probing (``bcc``), a uprobe attached to the library that must fire when this process
    calls the function (so "uprobes work" means seen working, not only accepted)."""
    from wirestream.producers.tls_plaintext import LIBSSL, find_libssl

    why: str | None = None
    libraries = find_libssl()
    r.add("libssl", bool(libraries), ", ".join(map(str, libraries)) if libraries else
          f"no {LIBSSL} (ldconfig -p): nothing to put uprobes on (or name one with --libssl)")
    if not libraries:
        why = f"no {LIBSSL} found"
    missing = [t for t in TLS_TRACEPOINTS if not (TRACEFS / "events" / t).is_dir()]
    r.add("tls socket tracepoints", not missing, "missing: " + ", ".join(missing) if missing else
          ", ".join(t.replace("/", ":") for t in TLS_TRACEPOINTS) + ": the TCP connection of an SSL call")
    if missing and why is None:
        why = "missing tracepoints " + ", ".join(missing) + " (Linux 6.3+ has sock:sock_send_length)"
    if why is None and not r.ebpf:
        why = r.ebpf_reason
    if why is None and bcc is not None:
        lib = _ssl_library_of_this_process() or libraries[0]
        try:
            b = bcc.BPF(text=UPROBE_PROBE)
            try:
                b.attach_uprobe(name=str(lib).encode(), sym=b"SSL_CTX_new", fn_name=b"hit")
                import ssl

                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # calls SSL_CTX_new
                fired = int(b[b"hits"][b[b"hits"].Key(0)].value)
            finally:
                b.cleanup()
            if fired:
                r.add("uprobe probe", True, f"a uprobe on {lib}:SSL_CTX_new attached and fired")
            else:
                r.add("uprobe probe", False, f"a uprobe on {lib}:SSL_CTX_new attached but did not fire")
                why = "uprobes attach but do not fire"
        except Exception as exc:
            detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            r.add("uprobe probe", False, f"a uprobe on {lib}:SSL_CTX_new does not attach: {detail}")
            why = "uprobes do not attach (CONFIG_UPROBE_EVENTS, lockdown, or privileges)"
    r.tls_plaintext = why is None
    r.tls_plaintext_reason = why or ""


def add_connection_checks(r: Report) -> None:
    """How this machine's wirestream would talk to Kafka and the schema registry (from the
    WIRESTREAM_KAFKA_* and WIRESTREAM_REGISTRY_* settings): which protocol, mechanism,
    user and files, never a secret (docs/security.md). Not a connection attempt."""
    from wirestream.kafka_security import KafkaSecurityError, load
    from wirestream.registry_client_security import describe_registry_security

    try:
        r.add("kafka security", True, load().describe())
    except KafkaSecurityError as exc:
        r.add("kafka security", False, str(exc))
    registry = describe_registry_security()
    r.add("registry security", ": PROBLEM:" not in registry, registry)

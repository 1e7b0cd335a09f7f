/* Socket and syscall events for live capture (producers/socket_events.py).
 *
 * Tracepoints only (kprobes/fentry are not available everywhere), and only tracepoint
 * arguments, bcc helpers and user memory are read, never kernel structs, so the program
 * does not depend on the exact kernel headers it is compiled against.
 *
 *   sock:inet_sock_set_state      every TCP state change, with the 4-tuple
 *   tcp:tcp_retransmit_skb        every retransmitted segment, with the 4-tuple
 *   tcp:tcp_retransmit_synack     every retransmitted SYN-ACK
 *   sock_ops (root cgroup)        retransmissions with segment counts (see sock_ops)
 *   syscalls:sys_{enter,exit}_connect, _accept, _accept4, sys_enter_close
 *   syscalls:sys_{enter,exit}_{write,read,writev,readv,sendto,recvfrom,sendmsg,recvmsg}
 *                                 counted per socket in the kernel (io_stats), see below
 *
 * Which process? A state change often runs in softirq context, where "current" is
 * whatever task was interrupted, so the pid of a state change is only trusted where the
 * kernel is known to run in the process's own context:
 *   - CLOSE -> SYN_SENT happens inside connect(): that process is the client. It is
 *     remembered by socket address (`connecting`) and reported on the socket's later
 *     events; at SYN_SENT the source port is not chosen yet, so the client's 4-tuple
 *     comes with SYN_SENT -> ESTABLISHED.
 *   - accept()/accept4() return in the server process. The peer address comes from the
 *     sockaddr the caller passed (user memory); the local address from the passive
 *     socket's SYN_RECV -> ESTABLISHED change, remembered by peer address (`passive`).
 */
#include <uapi/linux/ptrace.h>

#define AF_INET 2
#define AF_INET6 10
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_CLOSE 7

#define EV_STATE 1
#define EV_RETRANSMIT 2
#define EV_CONNECT 3
#define EV_ACCEPT 4
#define EV_CLOSE 5

/* A socket's data syscalls so far, per direction: calls (errors and EAGAIN included), bytes
 * (what the calls returned), and nanoseconds spent inside them (blocking included). */
struct io_counts {
    u64 skaddr;       /* identity only: which kernel socket the fd is */
    u64 cgroup_id;    /* of the process, at its first call */
    u64 send_bytes;
    u64 recv_bytes;
    u64 send_ns;
    u64 recv_ns;
    u32 send_calls;
    u32 recv_calls;
};

/* Mirrored by producers/socket_events.py (EVENT_STRUCT): 144 bytes, no implicit padding. */
struct event {
    u64 ts_ns;        /* bpf_ktime_get_ns: CLOCK_MONOTONIC */
    u64 skaddr;       /* kernel socket address: identity only, never dereferenced */
    u64 cgroup_id;
    u32 pid;          /* thread id; 0: no trusted process for this event */
    u32 tgid;         /* process id */
    u32 kind;
    s32 ret;          /* connect/accept return value */
    u32 fd;
    u16 family;
    u16 sport;        /* host byte order: local port for connect/accept/close */
    u16 dport;
    u8 oldstate;
    u8 newstate;
    u8 saddr[16];
    u8 daddr[16];
    char comm[16];
    u32 segments;     /* retransmit: segments retransmitted (a GSO skb holds several) */
    /* close: the socket's io_counts (without skaddr), so the last calls are never lost */
    u32 send_calls;
    u32 recv_calls;
    u64 send_bytes;
    u64 recv_bytes;
    u64 send_ns;
    u64 recv_ns;
};

struct proc {
    u64 cgroup_id;
    u32 pid;
    u32 tgid;
    char comm[16];
};

struct peer {
    u16 family;
    u16 port;
    u8 addr[16];
};

/* a connection as the tracepoints and sock_ops see it: family, local/remote port and address */
struct tuple {
    u16 family;
    u16 sport;
    u16 dport;
    u16 pad;
    u8 saddr[16];
    u8 daddr[16];
};

/* the local end of an accepted socket, and the socket itself */
struct accepted {
    struct peer local;
    u64 skaddr;
};

struct connect_arg {
    u64 fd;
    u64 skaddr;
};

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(lost, u64, 1);                          /* events the ring had no room for */
BPF_TABLE("lru_hash", u64, struct proc, connecting, 65536);       /* skaddr -> process in connect() */
BPF_TABLE("lru_hash", struct peer, struct accepted, passive, 65536);  /* peer -> accepted socket */
BPF_HASH(accept_args, u64, u64, 16384);                  /* thread -> user sockaddr pointer */
BPF_HASH(connect_args, u64, struct connect_arg, 16384);  /* thread -> fd, socket in connect() */
BPF_TABLE("lru_hash", u64, u64, socket_fds, 65536);             /* (tgid << 32 | fd) -> skaddr, or 1 if unknown */
BPF_TABLE("lru_hash", u64, struct io_counts, io_stats, 65536);  /* (tgid << 32 | fd) -> its data syscalls */
/* connections whose retransmissions sock_ops reports (with segment counts) */
BPF_TABLE("lru_hash", struct tuple, u8, sockops_covered, 65536);

/* A tracepoint's addresses: saddr/daddr (4 bytes) for IPv4, saddr_v6/daddr_v6 otherwise.
 * (A macro: each tracepoint has its own argument struct.) */
#define TUPLE_ADDRS(src, dst, args)                          \
    do {                                                     \
        if ((args)->family == AF_INET) {                     \
            __builtin_memcpy((src), (args)->saddr, 4);       \
            __builtin_memcpy((dst), (args)->daddr, 4);       \
        } else {                                             \
            __builtin_memcpy((src), (args)->saddr_v6, 16);   \
            __builtin_memcpy((dst), (args)->daddr_v6, 16);   \
        }                                                    \
    } while (0)

static __always_inline struct event *reserve(u32 kind) {
    struct event *ev = events.ringbuf_reserve(sizeof(struct event));
    if (!ev) {
        u32 zero = 0;
        u64 *n = lost.lookup(&zero);
        if (n)
            *n += 1;
        return 0;
    }
    __builtin_memset(ev, 0, sizeof(*ev));
    ev->ts_ns = bpf_ktime_get_ns();
    ev->kind = kind;
    return ev;
}

static __always_inline void current_process(struct event *ev) {
    u64 id = bpf_get_current_pid_tgid();
    ev->pid = (u32)id;
    ev->tgid = id >> 32;
    ev->cgroup_id = bpf_get_current_cgroup_id();
    bpf_get_current_comm(ev->comm, sizeof(ev->comm));
}

/* The process that connect()ed socket sk, if we saw it do so. */
static __always_inline void remembered_process(struct event *ev, u64 sk) {
    struct proc *p = connecting.lookup(&sk);
    if (p) {
        ev->pid = p->pid;
        ev->tgid = p->tgid;
        ev->cgroup_id = p->cgroup_id;
        __builtin_memcpy(ev->comm, p->comm, sizeof(ev->comm));
    }
}

TRACEPOINT_PROBE(sock, inet_sock_set_state) {
    if (args->protocol != 6)  /* IPPROTO_TCP */
        return 0;
    u64 sk = (u64)args->skaddr;
    struct event *ev = reserve(EV_STATE);
    if (!ev)
        return 0;
    ev->skaddr = sk;
    ev->family = args->family;
    ev->sport = args->sport;
    ev->dport = args->dport;
    ev->oldstate = args->oldstate;
    ev->newstate = args->newstate;
    TUPLE_ADDRS(ev->saddr, ev->daddr, args);
    if (args->newstate == TCP_SYN_SENT) {
        /* inside connect(): the current task is the client */
        current_process(ev);
        struct proc p = {};
        p.pid = ev->pid;
        p.tgid = ev->tgid;
        p.cgroup_id = ev->cgroup_id;
        __builtin_memcpy(p.comm, ev->comm, sizeof(p.comm));
        connecting.update(&sk, &p);
        struct connect_arg *ca = connect_args.lookup(&(u64){bpf_get_current_pid_tgid()});
        if (ca)
            ca->skaddr = sk;
    } else {
        remembered_process(ev, sk);
        if (args->newstate == TCP_ESTABLISHED && args->oldstate == TCP_SYN_RECV) {
            struct peer remote = {};
            struct accepted local = {};
            remote.family = local.local.family = args->family;
            remote.port = args->dport;
            local.local.port = args->sport;
            local.skaddr = sk;  /* the child socket, which accept() returns */
            __builtin_memcpy(remote.addr, ev->daddr, 16);
            __builtin_memcpy(local.local.addr, ev->saddr, 16);
            passive.update(&remote, &local);
        }
        if (args->newstate == TCP_CLOSE) {
            connecting.delete(&sk);
            struct tuple t = {};
            t.family = ev->family;
            t.sport = ev->sport;
            t.dport = ev->dport;
            __builtin_memcpy(t.saddr, ev->saddr, 16);
            __builtin_memcpy(t.daddr, ev->daddr, 16);
            sockops_covered.delete(&t);
        }
    }
    events.ringbuf_submit(ev, 0);
    return 0;
}

TRACEPOINT_PROBE(tcp, tcp_retransmit_skb) {
    /* Connections that sock_ops watches are reported from there, with the number of
     * segments; this tracepoint only says "one skb", which may hold several. */
    struct tuple t = {};
    t.family = args->family;
    t.sport = args->sport;
    t.dport = args->dport;
    TUPLE_ADDRS(t.saddr, t.daddr, args);
    if (sockops_covered.lookup(&t))
        return 0;
    struct event *ev = reserve(EV_RETRANSMIT);
    if (!ev)
        return 0;
    ev->segments = 1;
    u64 sk = (u64)args->skaddr;
    ev->skaddr = sk;
    ev->family = args->family;
    ev->sport = args->sport;
    ev->dport = args->dport;
    ev->newstate = args->state;
    TUPLE_ADDRS(ev->saddr, ev->daddr, args);
    remembered_process(ev, sk);
    events.ringbuf_submit(ev, 0);
    return 0;
}

/* A listener's SYN-ACK retransmitted (the request socket has no full socket yet);
 * RetransSegs counts these too. */
TRACEPOINT_PROBE(tcp, tcp_retransmit_synack) {
    struct event *ev = reserve(EV_RETRANSMIT);
    if (!ev)
        return 0;
    ev->family = args->family;
    ev->sport = args->sport;
    ev->dport = args->dport;
    ev->newstate = TCP_SYN_RECV;
    ev->segments = 1;
    TUPLE_ADDRS(ev->saddr, ev->daddr, args);
    events.ringbuf_submit(ev, 0);
    return 0;
}

/* --- sock_ops (cgroup): retransmissions with their segment counts --------------------
 *
 * RetransSegs counts segments, and a retransmitted skb can hold several (TCP builds
 * GSO skbs even when the device segments nothing). Only sock_ops' RETRANS_CB says how
 * many, so every TCP socket opened (connect) or accepted while we run asks for it. */

static __always_inline void tuple_of(struct bpf_sock_ops *skops, struct tuple *t) {
    t->family = skops->family;
    t->sport = skops->local_port;                            /* host byte order */
    t->dport = bpf_ntohl(skops->remote_port);                /* network byte order */
    if (skops->family == AF_INET) {
        u32 l = skops->local_ip4, r = skops->remote_ip4;
        __builtin_memcpy(t->saddr, &l, 4);
        __builtin_memcpy(t->daddr, &r, 4);
    } else {
        u32 l0 = skops->local_ip6[0], l1 = skops->local_ip6[1], l2 = skops->local_ip6[2], l3 = skops->local_ip6[3];
        u32 r0 = skops->remote_ip6[0], r1 = skops->remote_ip6[1], r2 = skops->remote_ip6[2], r3 = skops->remote_ip6[3];
        __builtin_memcpy(&t->saddr[0], &l0, 4);
        __builtin_memcpy(&t->saddr[4], &l1, 4);
        __builtin_memcpy(&t->saddr[8], &l2, 4);
        __builtin_memcpy(&t->saddr[12], &l3, 4);
        __builtin_memcpy(&t->daddr[0], &r0, 4);
        __builtin_memcpy(&t->daddr[4], &r1, 4);
        __builtin_memcpy(&t->daddr[8], &r2, 4);
        __builtin_memcpy(&t->daddr[12], &r3, 4);
    }
}

int sock_ops(struct bpf_sock_ops *skops) {
    u32 op = skops->op;
    struct tuple t = {};
    if (op == BPF_SOCK_OPS_TCP_CONNECT_CB || op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB ||
        op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB) {
        bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_RETRANS_CB_FLAG);
        tuple_of(skops, &t);
        u8 one = 1;
        sockops_covered.update(&t, &one);
        return 1;
    }
    if (op != BPF_SOCK_OPS_RETRANS_CB)
        return 1;
    tuple_of(skops, &t);
    struct event *ev = reserve(EV_RETRANSMIT);
    if (!ev)
        return 1;
    ev->family = t.family;
    ev->sport = t.sport;
    ev->dport = t.dport;
    __builtin_memcpy(ev->saddr, t.saddr, 16);
    __builtin_memcpy(ev->daddr, t.daddr, 16);
    ev->newstate = skops->state;
    ev->segments = skops->args[1];
    ev->ret = skops->args[2];  /* the transmit's error, if any (RetransSegs counts it anyway) */
    events.ringbuf_submit(ev, 0);
    return 1;
}

/* The syscall tracepoints need CONFIG_FTRACE_SYSCALLS; the loader defines WITH_SYSCALLS
 * when tracefs has them. Without them there are no connect/accept/close events and no
 * server process (the client's still comes from SYN_SENT). */
#ifdef WITH_SYSCALLS

/* --- connect(): the fd, and the outcome -------------------------------------------- */

TRACEPOINT_PROBE(syscalls, sys_enter_connect) {
    struct connect_arg ca = {};
    ca.fd = args->fd;
    u64 id = bpf_get_current_pid_tgid();
    connect_args.update(&id, &ca);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_connect) {
    u64 id = bpf_get_current_pid_tgid();
    struct connect_arg *ca = connect_args.lookup(&id);
    if (!ca)
        return 0;
    u64 sk = ca->skaddr;
    u32 fd = ca->fd;
    connect_args.delete(&id);
    if (!sk)  /* not a TCP socket reaching SYN_SENT (UDP, unix, a bad address) */
        return 0;
    u64 key = (id & 0xffffffff00000000ULL) | fd;
    socket_fds.update(&key, &sk);
    struct event *ev = reserve(EV_CONNECT);
    if (!ev)
        return 0;
    current_process(ev);
    ev->skaddr = sk;
    ev->fd = fd;
    ev->ret = args->ret;
    events.ringbuf_submit(ev, 0);
    return 0;
}

/* --- accept(), accept4(): the server process ----------------------------------------- */

static __always_inline int accept_enter(void *sockaddr) {
    u64 id = bpf_get_current_pid_tgid();
    u64 ptr = (u64)sockaddr;
    accept_args.update(&id, &ptr);
    return 0;
}

static __always_inline int accept_exit(long ret) {
    u64 id = bpf_get_current_pid_tgid();
    u64 *ptr = accept_args.lookup(&id);
    if (!ptr)
        return 0;
    u64 uaddr = *ptr;
    accept_args.delete(&id);
    if (ret < 0 || !uaddr)
        return 0;
    /* struct sockaddr_in / sockaddr_in6, as the kernel wrote it for the caller */
    u8 sa[24] = {};
    if (bpf_probe_read_user(sa, sizeof(sa), (void *)uaddr))
        return 0;
    struct peer remote = {};
    remote.family = sa[0] | (sa[1] << 8);
    if (remote.family != AF_INET && remote.family != AF_INET6)
        return 0;
    remote.port = (sa[2] << 8) | sa[3];
    if (remote.family == AF_INET)
        __builtin_memcpy(remote.addr, &sa[4], 4);
    else
        __builtin_memcpy(remote.addr, &sa[8], 16);
    struct event *ev = reserve(EV_ACCEPT);
    if (!ev)
        return 0;
    current_process(ev);
    ev->fd = ret;
    ev->ret = 0;
    ev->family = remote.family;
    ev->dport = remote.port;
    __builtin_memcpy(ev->daddr, remote.addr, 16);
    u64 sk = 1;  /* an accepted socket whose state change we did not see: no address */
    struct accepted *local = passive.lookup(&remote);
    if (local) {
        ev->sport = local->local.port;
        __builtin_memcpy(ev->saddr, local->local.addr, 16);
        sk = local->skaddr;
        ev->skaddr = sk;
        passive.delete(&remote);
    }
    u64 key = (id & 0xffffffff00000000ULL) | (u32)ret;
    socket_fds.update(&key, &sk);
    events.ringbuf_submit(ev, 0);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_accept4) { return accept_enter(args->upeer_sockaddr); }
TRACEPOINT_PROBE(syscalls, sys_exit_accept4) { return accept_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_accept) { return accept_enter(args->upeer_sockaddr); }
TRACEPOINT_PROBE(syscalls, sys_exit_accept) { return accept_exit(args->ret); }

/* --- close() of a socket we saw connected or accepted --------------------------------- */

TRACEPOINT_PROBE(syscalls, sys_enter_close) {
    u64 id = bpf_get_current_pid_tgid();
    u64 key = (id & 0xffffffff00000000ULL) | (u32)args->fd;
    u64 *sk = socket_fds.lookup(&key);
    if (!sk)
        return 0;
    struct event *ev = reserve(EV_CLOSE);
    if (ev) {
        current_process(ev);
        ev->fd = args->fd;
        ev->skaddr = *sk == 1 ? 0 : *sk;
        struct io_counts *io = io_stats.lookup(&key);
        if (io) {
            ev->send_calls = io->send_calls;
            ev->recv_calls = io->recv_calls;
            ev->send_bytes = io->send_bytes;
            ev->recv_bytes = io->recv_bytes;
            ev->send_ns = io->send_ns;
            ev->recv_ns = io->recv_ns;
        }
        events.ringbuf_submit(ev, 0);
    }
    io_stats.delete(&key);
    socket_fds.delete(&key);
    return 0;
}

/* --- data syscalls on those sockets, counted in the kernel ------------------------------
 *
 * Every read/write/send/recv syscall of the machine passes here, so the cost is what
 * matters: at entry one hash lookup says whether the fd is a socket we saw connected or
 * accepted (socket_fds), and only then is the call remembered for its exit (io_calls, by
 * thread); at exit one lookup finds it, and the counts are added in place (io_stats, by
 * process and fd: threads share the fd table). Nothing goes through the ring buffer:
 * user space reads io_stats every few seconds (an `io` event per socket that changed)
 * and the close event carries the final counts. Sockets opened before the capture
 * started, dup()ed fds and sendfile/splice are not counted (docs/capture.md). */

#define IO_SEND 1
#define IO_RECV 2

struct io_call {
    u64 key;          /* (tgid << 32) | fd */
    u64 ts_ns;
    u32 dir;
    u32 pad;
};

BPF_TABLE("lru_hash", u64, struct io_call, io_calls, 16384);  /* thread -> its call in progress */

static __always_inline int io_enter(u64 fd, u32 dir) {
    u64 id = bpf_get_current_pid_tgid();
    u64 key = (id & 0xffffffff00000000ULL) | (u32)fd;
    if (!socket_fds.lookup(&key))
        return 0;
    struct io_call c = {};
    c.key = key;
    c.ts_ns = bpf_ktime_get_ns();
    c.dir = dir;
    io_calls.update(&id, &c);
    return 0;
}

static __always_inline int io_exit(long ret) {
    u64 id = bpf_get_current_pid_tgid();
    struct io_call *c = io_calls.lookup(&id);
    if (!c)
        return 0;
    u64 key = c->key;
    u64 spent = bpf_ktime_get_ns() - c->ts_ns;
    u32 dir = c->dir;
    io_calls.delete(&id);
    struct io_counts *n = io_stats.lookup(&key);
    if (!n) {
        u64 *sk = socket_fds.lookup(&key);
        if (!sk)  /* another thread closed it meanwhile */
            return 0;
        struct io_counts fresh = {};
        fresh.skaddr = *sk == 1 ? 0 : *sk;
        fresh.cgroup_id = bpf_get_current_cgroup_id();
        io_stats.insert(&key, &fresh);  /* a concurrent first call may have inserted it */
        n = io_stats.lookup(&key);
        if (!n)
            return 0;
    }
    u64 bytes = ret > 0 ? (u64)ret : 0;
    if (dir == IO_SEND) {
        __sync_fetch_and_add(&n->send_calls, 1);
        __sync_fetch_and_add(&n->send_bytes, bytes);
        __sync_fetch_and_add(&n->send_ns, spent);
    } else {
        __sync_fetch_and_add(&n->recv_calls, 1);
        __sync_fetch_and_add(&n->recv_bytes, bytes);
        __sync_fetch_and_add(&n->recv_ns, spent);
    }
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_write) { return io_enter(args->fd, IO_SEND); }
TRACEPOINT_PROBE(syscalls, sys_exit_write) { return io_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_writev) { return io_enter(args->fd, IO_SEND); }
TRACEPOINT_PROBE(syscalls, sys_exit_writev) { return io_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendto) { return io_enter(args->fd, IO_SEND); }
TRACEPOINT_PROBE(syscalls, sys_exit_sendto) { return io_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendmsg) { return io_enter(args->fd, IO_SEND); }
TRACEPOINT_PROBE(syscalls, sys_exit_sendmsg) { return io_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_read) { return io_enter(args->fd, IO_RECV); }
TRACEPOINT_PROBE(syscalls, sys_exit_read) { return io_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_readv) { return io_enter(args->fd, IO_RECV); }
TRACEPOINT_PROBE(syscalls, sys_exit_readv) { return io_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_recvfrom) { return io_enter(args->fd, IO_RECV); }
TRACEPOINT_PROBE(syscalls, sys_exit_recvfrom) { return io_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_recvmsg) { return io_enter(args->fd, IO_RECV); }
TRACEPOINT_PROBE(syscalls, sys_exit_recvmsg) { return io_exit(args->ret); }

#endif /* WITH_SYSCALLS */

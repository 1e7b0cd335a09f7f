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

/* Mirrored by producers/socket_events.py (EVENT_STRUCT): 104 bytes, no implicit padding. */
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

struct connect_arg {
    u64 fd;
    u64 skaddr;
};

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(lost, u64, 1);                          /* events the ring had no room for */
BPF_TABLE("lru_hash", u64, struct proc, connecting, 65536);       /* skaddr -> process in connect() */
BPF_TABLE("lru_hash", struct peer, struct peer, passive, 65536);  /* peer -> local end of an accepted socket */
BPF_HASH(accept_args, u64, u64, 16384);                  /* thread -> user sockaddr pointer */
BPF_HASH(connect_args, u64, struct connect_arg, 16384);  /* thread -> fd, socket in connect() */
BPF_TABLE("lru_hash", u64, u64, socket_fds, 65536);
/* connections whose retransmissions sock_ops reports (with segment counts) */
BPF_TABLE("lru_hash", struct tuple, u8, sockops_covered, 65536);               /* (tgid << 32 | fd) -> skaddr or 1 */

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
            struct peer remote = {}, local = {};
            remote.family = local.family = args->family;
            remote.port = args->dport;
            local.port = args->sport;
            __builtin_memcpy(remote.addr, ev->daddr, 16);
            __builtin_memcpy(local.addr, ev->saddr, 16);
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
    struct peer *local = passive.lookup(&remote);
    if (local) {
        ev->sport = local->port;
        __builtin_memcpy(ev->saddr, local->addr, 16);
        passive.delete(&remote);
    }
    u64 key = (id & 0xffffffff00000000ULL) | (u32)ret;
    u64 one = 1;
    socket_fds.update(&key, &one);
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
        events.ringbuf_submit(ev, 0);
    }
    socket_fds.delete(&key);
    return 0;
}

#endif /* WITH_SYSCALLS */

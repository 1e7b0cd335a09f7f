/* TLS plaintext at OpenSSL's API, for live capture (producers/tls_plaintext.py).
 *
 * uprobes/uretprobes on libssl.so.3's SSL_write, SSL_read, SSL_write_ex and SSL_read_ex
 * (and SSL_do_handshake, for the socket only),
 * attached to the library file, so every process that maps it is covered (an inode-based
 * attachment: processes started later too). At entry the arguments are remembered per
 * thread; at return, when the call moved bytes, the first MAX_DATA bytes of the buffer are
 * copied (the true length is reported too) with the process, thread and socket.
 *
 * Which socket? OpenSSL's SSL struct is opaque and changes between releases, and
 * SSL_get_fd is a userland function a probe cannot call. So the socket is taken from the
 * kernel instead, by the thread that is inside the SSL call:
 *   sock:sock_send_length / sock:sock_recv_length  (sock_sendmsg/sock_recvmsg, process
 *     context: the socket the thread's write()/read() went to, as `sk`)
 * and the socket's 4-tuple from
 *   sock:inet_sock_set_state  (-> ESTABLISHED: connections made while running)
 *   tcp:tcp_probe             (every received segment of an established connection: the
 *                              connections that were there before we started)
 * All tracepoint arguments: no kernel struct is read, as in bpf/socket_events.c.
 * An SSL_read served from OpenSSL's own buffer makes no syscall: the socket is then the
 * one this SSL object used last (`ssl_socks`), in an SSL call or in SSL_do_handshake (also
 * probed: the request often arrives with the handshake's last flight and is read from
 * OpenSSL's buffer, without a syscall, by the first SSL_read). An SSL over a memory BIO (the application
 * does the I/O itself) never shows a socket: its chunks are counted, not published.
 */
#include <uapi/linux/ptrace.h>

#define AF_INET 2
#define TCP_ESTABLISHED 1
#define TCP_CLOSE 7

#define DIR_SEND 1
#define DIR_RECV 2

#define FN_WRITE 1
#define FN_READ 2
#define FN_WRITE_EX 3
#define FN_READ_EX 4
#define FN_HANDSHAKE 5  /* no data: only teaches which socket the SSL object uses */

#ifndef MAX_DATA
#define MAX_DATA 4096   /* a power of two */
#endif

/* Mirrored by producers/tls_plaintext.py (HEADER_STRUCT): 96 bytes, no implicit padding;
 * `captured` bytes of data follow. */
struct event {
    u64 ts_ns;        /* bpf_ktime_get_ns: CLOCK_MONOTONIC */
    u64 skaddr;       /* kernel socket: identity only, never dereferenced; 0 if unknown */
    u64 ssl;          /* the SSL object's address: identity only */
    u32 tid;
    u32 tgid;
    u32 len;          /* bytes the call moved */
    u32 captured;     /* of which copied here (at most MAX_DATA) */
    u16 family;       /* 0: no 4-tuple known for the socket */
    u16 sport;        /* local port, host byte order */
    u16 dport;
    u8 direction;
    u8 fn;
    u8 saddr[16];     /* local */
    u8 daddr[16];     /* remote */
    char comm[16];
    u8 data[MAX_DATA];
};

struct call {
    u64 ssl;
    u64 buf;
    u64 len_ptr;      /* _ex: size_t *written / *readbytes */
    u64 sk;           /* the socket this call did I/O on, if it did */
    u32 depth;        /* nested SSL calls on the thread (a callback): only the outer counts */
    u8 fn;
    u8 pad[3];
};

struct tuple {
    u16 family;
    u16 sport;
    u16 dport;
    u16 pad;
    u8 saddr[16];
    u8 daddr[16];
};

struct ssl_key {
    u64 ssl;
    u32 tgid;
    u32 pad;
};

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(lost, u64, 1);                    /* events the ring had no room for */
BPF_PERCPU_ARRAY(scratch, struct event, 1);        /* too big for the stack */
BPF_PERCPU_ARRAY(unwoken, u64, 1);                 /* bytes put in the ring since this CPU woke the reader */
BPF_HASH(active, u64, struct call, 16384);          /* thread -> the SSL call it is in */
BPF_TABLE("lru_hash", struct ssl_key, u64, ssl_socks, 65536);   /* SSL object -> socket */
BPF_TABLE("lru_hash", u64, struct tuple, socks, 131072);        /* socket -> 4-tuple */

static __always_inline int enter(u8 fn, u64 ssl, u64 buf, u64 len_ptr) {
    u64 id = bpf_get_current_pid_tgid();
#ifdef SELF_TGID
    if ((id >> 32) == SELF_TGID)   /* not our own Kafka/registry TLS */
        return 0;
#endif
#ifdef TARGET_TGID
    if ((id >> 32) != TARGET_TGID)
        return 0;
#endif
    struct call *c = active.lookup(&id);
    if (c) {
        c->depth += 1;
        return 0;
    }
    struct call nc = {};
    nc.ssl = ssl;
    nc.buf = buf;
    nc.len_ptr = len_ptr;
    nc.fn = fn;
    active.update(&id, &nc);
    return 0;
}

int enter_write(struct pt_regs *ctx) {
    return enter(FN_WRITE, PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), 0);
}
int enter_read(struct pt_regs *ctx) {
    return enter(FN_READ, PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), 0);
}
int enter_write_ex(struct pt_regs *ctx) {
    return enter(FN_WRITE_EX, PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), PT_REGS_PARM4(ctx));
}
int enter_read_ex(struct pt_regs *ctx) {
    return enter(FN_READ_EX, PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), PT_REGS_PARM4(ctx));
}

int enter_handshake(struct pt_regs *ctx) {
    return enter(FN_HANDSHAKE, PT_REGS_PARM1(ctx), 0, 0);
}

int leave(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    struct call *c = active.lookup(&id);
    if (!c)
        return 0;
    if (c->depth) {
        c->depth -= 1;
        return 0;
    }
    struct call call = *c;
    active.delete(&id);

    struct ssl_key key = {};
    key.ssl = call.ssl;
    key.tgid = id >> 32;
    if (call.fn == FN_HANDSHAKE) {
        if (call.sk)
            ssl_socks.update(&key, &call.sk);
        return 0;
    }

    long ret = PT_REGS_RC(ctx);
    u64 len = 0;
    if (call.fn == FN_WRITE || call.fn == FN_READ) {
        if ((int)ret <= 0)
            return 0;
        len = (u32)(int)ret;
    } else {
        if ((int)ret != 1 || !call.len_ptr)
            return 0;
        if (bpf_probe_read_user(&len, sizeof(len), (void *)call.len_ptr) || !len)
            return 0;
    }

    if (call.sk) {
        ssl_socks.update(&key, &call.sk);
    } else {
        u64 *sk = ssl_socks.lookup(&key);
        if (sk)
            call.sk = *sk;
    }

    u32 zero = 0;
    struct event *ev = scratch.lookup(&zero);
    if (!ev)
        return 0;
    ev->ts_ns = bpf_ktime_get_ns();
    ev->skaddr = call.sk;
    ev->ssl = call.ssl;
    ev->tid = (u32)id;
    ev->tgid = id >> 32;
    ev->len = len > 0xffffffff ? 0xffffffff : (u32)len;
    ev->fn = call.fn;
    ev->direction = (call.fn == FN_WRITE || call.fn == FN_WRITE_EX) ? DIR_SEND : DIR_RECV;
    ev->family = 0;
    ev->sport = 0;
    ev->dport = 0;
    struct tuple *t = call.sk ? socks.lookup(&call.sk) : 0;
    if (t) {
        ev->family = t->family;
        ev->sport = t->sport;
        ev->dport = t->dport;
        __builtin_memcpy(ev->saddr, t->saddr, 16);
        __builtin_memcpy(ev->daddr, t->daddr, 16);
    } else {
        __builtin_memset(ev->saddr, 0, 16);
        __builtin_memset(ev->daddr, 0, 16);
    }
    bpf_get_current_comm(ev->comm, sizeof(ev->comm));

    u32 n = len > MAX_DATA ? MAX_DATA : (u32)len;
    /* the verifier needs every size bounded: n is in [1, MAX_DATA] */
    n &= (2 * MAX_DATA - 1);
    if (n > MAX_DATA)
        return 0;
    if (bpf_probe_read_user(ev->data, n, (void *)call.buf))
        n = 0;   /* the buffer is not readable (paged out): the length alone is reported */
    ev->captured = n;
    /* Waking the reader for every chunk costs more than the rest of this program
     * (9 us per chunk with it, 2.7 us without, at MAX_DATA 4096: bench/bench_tls_uprobes.py): a CPU wakes it only
     * when it has put 1/16 of the ring in since it last did (the ring cannot fill up
     * unnoticed with up to 8 CPUs, and the producer drains it every poll interval). */
    u32 size = offsetof(struct event, data) + (n & (2 * MAX_DATA - 1));
    u64 wake = BPF_RB_NO_WAKEUP;
    u64 *pending = unwoken.lookup(&zero);
    if (pending) {
        *pending += size;
        if (*pending > (u64)RINGBUF_PAGES * 4096 / 16) {
            *pending = 0;
            wake = BPF_RB_FORCE_WAKEUP;
        }
    }
    if (events.ringbuf_output(ev, size, wake)) {
        u64 *lostn = lost.lookup(&zero);
        if (lostn)
            *lostn += 1;
    }
    return 0;
}

/* The socket a thread inside an SSL call reads or writes. */
static __always_inline void saw_socket(u64 sk, u16 protocol) {
    if (protocol != 6)  /* IPPROTO_TCP */
        return;
    u64 id = bpf_get_current_pid_tgid();
    struct call *c = active.lookup(&id);
    if (c && !c->sk)
        c->sk = sk;
}

TRACEPOINT_PROBE(sock, sock_send_length) {
    saw_socket((u64)args->sk, args->protocol);
    return 0;
}

TRACEPOINT_PROBE(sock, sock_recv_length) {
    saw_socket((u64)args->sk, args->protocol);
    return 0;
}

TRACEPOINT_PROBE(sock, inet_sock_set_state) {
    if (args->protocol != 6)
        return 0;
    u64 sk = (u64)args->skaddr;
    if (args->newstate == TCP_CLOSE) {
        socks.delete(&sk);   /* the kernel may reuse the address */
        return 0;
    }
    if (args->newstate != TCP_ESTABLISHED)
        return 0;
    struct tuple t = {};
    t.family = args->family;
    t.sport = args->sport;
    t.dport = args->dport;
    if (args->family == AF_INET) {
        __builtin_memcpy(t.saddr, args->saddr, 4);
        __builtin_memcpy(t.daddr, args->daddr, 4);
    } else {
        __builtin_memcpy(t.saddr, args->saddr_v6, 16);
        __builtin_memcpy(t.daddr, args->daddr_v6, 16);
    }
    socks.update(&sk, &t);
    return 0;
}

/* sockaddr_in: family(2) port(2) addr(4); sockaddr_in6: family(2) port(2) flowinfo(4) addr(16) */
TRACEPOINT_PROBE(tcp, tcp_probe) {
    u64 sk = (u64)args->skaddr;
    if (socks.lookup(&sk))
        return 0;
    struct tuple t = {};
    t.family = args->family;
    t.sport = args->sport;
    t.dport = args->dport;
    if (args->family == AF_INET) {
        __builtin_memcpy(t.saddr, args->saddr + 4, 4);
        __builtin_memcpy(t.daddr, args->daddr + 4, 4);
    } else {
        __builtin_memcpy(t.saddr, args->saddr + 8, 16);
        __builtin_memcpy(t.daddr, args->daddr + 8, 16);
    }
    socks.update(&sk, &t);
    return 0;
}

/* Socket filter for live packet capture (producers/live_capture.py).
 *
 * Attached to a TPACKET_V3 packet socket. For every frame the socket would receive it
 * decides, in the kernel, whether the frame is worth copying into the ring and how many
 * bytes of it (the return value: 0 drops, N keeps the first N bytes).
 *
 * It reads only __sk_buff context fields, never kernel structs, so it does not depend on
 * the kernel headers it is compiled against (docs/capture.md).
 *
 * SNAPLEN is defined by the loader: link + IP + TCP header room plus the payload snap length.
 */
#include <uapi/linux/bpf.h>

#define PACKET_OUTGOING 4
#define LOOPBACK_IFINDEX 1
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8
#define ETH_P_PPP_SES 0x8864 /* PPPoE session: IP inside (rust/src/decode/tunnel.rs) */
#define ETH_P_MPLS_UC 0x8847
#define ETH_P_MPLS_MC 0x8848

/* Counter slots; user space sums the per-CPU values (live_capture.FILTER_COUNTERS). */
#define SEEN 0          /* every frame the filter ran on */
#define PASSED 1        /* frames handed to the ring (which may still drop them when full) */
#define LOOPBACK_COPY 2 /* the sent copy of a loopback packet: the received copy is kept */
#define NON_IP 3        /* ARP, LLDP, ...: not IPv4/IPv6 (or PPPoE, MPLS, a VLAN tag around them) */
#define GSO 4           /* GSO/TSO super-packets (one frame, several segments on the wire) */
#define GSO_SEGMENTS 5  /* the segments those frames stand for */
BPF_PERCPU_ARRAY(counters, u64, 6);

static __always_inline void count(u32 slot, u64 n) {
    u64 *v = counters.lookup(&slot);
    if (v)
        *v += n;
}

int capture(struct __sk_buff *skb) {
    count(SEEN, 1);
    /* Loopback: a packet socket sees each packet as sent and again as received. */
    if (skb->pkt_type == PACKET_OUTGOING && skb->ifindex == LOOPBACK_IFINDEX) {
        count(LOOPBACK_COPY, 1);
        return 0;
    }
    u32 proto = bpf_ntohs(skb->protocol);
    if (proto != ETH_P_IP && proto != ETH_P_IPV6 && proto != ETH_P_8021Q && proto != ETH_P_8021AD &&
        proto != ETH_P_PPP_SES && proto != ETH_P_MPLS_UC && proto != ETH_P_MPLS_MC) {
        count(NON_IP, 1);
        return 0;
    }
    /* Outgoing TSO/GSO: the stack hands the device one large frame that the NIC (or
     * the GSO layer, after this tap) cuts into gso_segs segments. */
    if (skb->gso_segs > 1) {
        count(GSO, 1);
        count(GSO_SEGMENTS, skb->gso_segs);
    }
    count(PASSED, 1);
    return SNAPLEN;
}

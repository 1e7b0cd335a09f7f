"""Tiny pcap writer for crafting TCP test traces (LINKTYPE_RAW=101, IPv4)."""
import struct

F, S, R, P, A = 0x01, 0x02, 0x04, 0x08, 0x10

def ip2b(ip):
    return bytes(int(x) for x in ip.split('.'))

def csum(b):
    if len(b) % 2: b += b'\0'
    s = sum(struct.unpack('!%dH' % (len(b)//2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff

def pkt(src, sport, dst, dport, seq, ack, flags, win, payload=b'', opts=b''):
    while len(opts) % 4: opts += b'\x01'
    off = (20 + len(opts)) // 4
    tcp = struct.pack('!HHIIBBHHH', sport, dport, seq & 0xffffffff, ack & 0xffffffff,
                      off << 4, flags, win, 0, 0) + opts + payload
    ph = ip2b(src) + ip2b(dst) + struct.pack('!BBH', 0, 6, len(tcp))
    c = csum(ph + tcp)
    tcp = tcp[:16] + struct.pack('!H', c) + tcp[18:]
    tot = 20 + len(tcp)
    iph = struct.pack('!BBHHHBBH4s4s', 0x45, 0, tot, 0, 0x4000, 64, 6, 0, ip2b(src), ip2b(dst))
    iph = iph[:10] + struct.pack('!H', csum(iph)) + iph[12:]
    return iph + tcp

def wscale(n): return bytes([3, 3, n])
def mss(n): return struct.pack('!BBH', 2, 4, n)

def write(path, pkts):
    """pkts: list of (time_float, bytes)"""
    with open(path, 'wb') as f:
        f.write(struct.pack('<IHHiIII', 0xa1b23c4d, 2, 4, 0, 0, 65535, 101))  # ns pcap
        for t, b in pkts:
            sec = int(t); ns = int(round((t - sec) * 1e9))
            f.write(struct.pack('<IIII', sec, ns, len(b), len(b)) + b)

class Conv:
    """helper: client C -> server S"""
    def __init__(self, c='10.0.0.1', cp=40000, s='10.0.0.2', sp=80):
        self.c, self.cp, self.s, self.sp = c, cp, s, sp
        self.out = []
    def C(self, t, seq, ack, flags, win=1000, data=b'', opts=b''):
        self.out.append((t, pkt(self.c, self.cp, self.s, self.sp, seq, ack, flags, win, data, opts)))
    def S(self, t, seq, ack, flags, win=1000, data=b'', opts=b''):
        self.out.append((t, pkt(self.s, self.sp, self.c, self.cp, seq, ack, flags, win, data, opts)))

# --- IPv6 (added for the edge-case captures; the IPv4 API above is unchanged) -------------
import ipaddress

def ip6b(ip):
    return ipaddress.IPv6Address(ip).packed

def pkt6(src, sport, dst, dport, seq, ack, flags, win, payload=b'', opts=b''):
    """An IPv6 TCP packet (no extension headers); LINKTYPE_RAW carries it as-is."""
    while len(opts) % 4: opts += b'\x01'
    off = (20 + len(opts)) // 4
    tcp = struct.pack('!HHIIBBHHH', sport, dport, seq & 0xffffffff, ack & 0xffffffff,
                      off << 4, flags, win, 0, 0) + opts + payload
    ph = ip6b(src) + ip6b(dst) + struct.pack('!I3xB', len(tcp), 6)
    c = csum(ph + tcp)
    tcp = tcp[:16] + struct.pack('!H', c) + tcp[18:]
    iph = struct.pack('!IHBB16s16s', 6 << 28, len(tcp), 6, 64, ip6b(src), ip6b(dst))
    return iph + tcp

class Conv6(Conv):
    """Conv over IPv6 (documentation prefix 2001:db8::/32 by default)."""
    def __init__(self, c='2001:db8::1', cp=40000, s='2001:db8::2', sp=80):
        super().__init__(c, cp, s, sp)
    def C(self, t, seq, ack, flags, win=1000, data=b'', opts=b''):
        self.out.append((t, pkt6(self.c, self.cp, self.s, self.sp, seq, ack, flags, win, data, opts)))
    def S(self, t, seq, ack, flags, win=1000, data=b'', opts=b''):
        self.out.append((t, pkt6(self.s, self.sp, self.c, self.cp, seq, ack, flags, win, data, opts)))

import os

def crafted_path(name):
    """tests/data/crafted/<name>, wherever the generator is run from."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', name)

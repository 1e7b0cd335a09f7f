"""e8: IPv6 connections (documentation prefix 2001:db8::/32), handshake to close.

Stream 0: 2001:db8::1 -> 2001:db8::2 port 443, with one RTO retransmission.
Stream 1: 2001:db8:0:1::5 -> 2001:db8::2 port 80 (address text with a '::' run).
"""
from tcpgen import *

a = Conv6('2001:db8::1', 40000, '2001:db8::2', 443)
a.C(1.000, 1000, 0, S, win=64800, opts=mss(1440) + wscale(7))
a.S(1.010, 5000, 1001, S | A, win=64800, opts=mss(1440) + wscale(7))
a.C(1.020, 1001, 5001, A, win=507)
a.C(1.030, 1001, 5001, P | A, win=507, data=b'a' * 200)
a.C(1.300, 1001, 5001, P | A, win=507, data=b'a' * 200)   # RTO retransmission
a.S(1.310, 5001, 1201, P | A, win=509, data=b'b' * 300)
a.C(1.320, 1201, 5301, A, win=505)
a.C(1.330, 1201, 5301, F | A, win=505)
a.S(1.340, 5301, 1202, F | A, win=509)
a.C(1.350, 1202, 5302, A, win=505)

b = Conv6('2001:db8:0:1:0:0:0:5', 40001, '2001:db8::2', 80)
b.C(2.000, 7000, 0, S)
b.S(2.010, 9000, 7001, S | A)
b.C(2.020, 7001, 9001, A)
b.C(2.030, 7001, 9001, P | A, data=b'c' * 10)
b.S(2.040, 9001, 7011, A)

write(crafted_path('e8_ipv6.pcap'), sorted(a.out + b.out))

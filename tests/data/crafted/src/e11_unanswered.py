"""e11: connections that never get established.

Stream 0 (port 40000): SYN answered by RST+ACK -> refused.
Stream 1 (port 40001): SYN and two SYN retransmissions, no answer -> incomplete_handshake.
Stream 2 (port 40002): SYN, SYN-ACK (retransmitted once), then nothing -> half_open.
"""
from tcpgen import *

a = Conv('10.0.0.1', 40000, '10.0.0.2', 81)
a.C(1.000, 1000, 0, S, opts=mss(1460))
a.S(1.001, 0, 1001, R | A, win=0)

b = Conv('10.0.0.1', 40001, '192.0.2.7', 80)
b.C(1.100, 2000, 0, S, opts=mss(1460))
b.C(2.100, 2000, 0, S, opts=mss(1460))
b.C(4.100, 2000, 0, S, opts=mss(1460))

c = Conv('10.0.0.1', 40002, '10.0.0.2', 80)
c.C(1.200, 3000, 0, S, opts=mss(1460))
c.S(1.210, 6000, 3001, S | A, opts=mss(1460))
c.S(2.210, 6000, 3001, S | A, opts=mss(1460))

write(crafted_path('e11_unanswered.pcap'), sorted(a.out + b.out + c.out))

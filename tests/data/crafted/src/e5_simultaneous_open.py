"""e5: simultaneous open: both sides send a pure SYN, then both send SYN-ACKs.

One stream (the 2nd SYN is the other side's first SYN, not a new ISN on a known side).
The client is the sender of the first SYN (10.0.0.1:5000).
"""
from tcpgen import *

c = Conv('10.0.0.1', 5000, '10.0.0.2', 6000)
c.C(1.000, 1000, 0, S, opts=mss(1460))
c.S(1.001, 8000, 0, S, opts=mss(1460))
c.C(1.010, 1000, 8001, S | A, opts=mss(1460))
c.S(1.011, 8000, 1001, S | A, opts=mss(1460))
c.C(1.020, 1001, 8001, P | A, data=b'a' * 100)
c.S(1.030, 8001, 1101, P | A, data=b'b' * 100)
c.C(1.040, 1101, 8101, F | A)
c.S(1.050, 8101, 1102, F | A)
c.C(1.060, 1102, 8102, A)
write(crafted_path('e5_simultaneous_open.pcap'), c.out)

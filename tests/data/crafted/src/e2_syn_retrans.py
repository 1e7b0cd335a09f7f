"""e2: the client's SYN is retransmitted (same ISN) before the SYN-ACK.

One stream; the 2nd SYN is a retransmission; iRTT is measured from the LAST SYN
(2.0 -> ACK at 2.1 = 100 ms, not 1.1 s).
"""
from tcpgen import *

c = Conv()
c.C(1.000, 1000, 0, S, win=64240, opts=mss(1460))
c.C(2.000, 1000, 0, S, win=64240, opts=mss(1460))   # RTO: same ISN
c.S(2.050, 5000, 1001, S | A, win=65160, opts=mss(1460))
c.C(2.100, 1001, 5001, A)
c.C(2.110, 1001, 5001, P | A, data=b'q' * 100)
c.S(2.160, 5001, 1101, P | A, data=b'r' * 300)
c.C(2.170, 1101, 5301, A)
c.C(2.200, 1101, 5301, F | A)
c.S(2.250, 5301, 1102, F | A)
c.C(2.260, 1102, 5302, A)
write(crafted_path('e2_syn_retrans.pcap'), c.out)

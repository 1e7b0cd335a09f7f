"""e3: the SYN-ACK is retransmitted (the client's ACK was lost after the capture point).

Client-side view: SYN, SYN-ACK, ACK (lost beyond us), SYN-ACK again 1 s later, ACK again
(same seq/ack/window: Wireshark's dup-ACK rule applies), then data and a close.
"""
from tcpgen import *

c = Conv()
c.C(1.000, 1000, 0, S)
c.S(1.010, 5000, 1001, S | A)
c.C(1.020, 1001, 5001, A)
c.S(2.010, 5000, 1001, S | A)   # retransmitted SYN-ACK
c.C(2.020, 1001, 5001, A)
c.C(2.030, 1001, 5001, P | A, data=b'q' * 100)
c.S(2.040, 5001, 1101, P | A, data=b'r' * 100)
c.C(2.050, 1101, 5101, F | A)
c.S(2.060, 5101, 1102, F | A)
c.C(2.070, 1102, 5102, A)
write(crafted_path('e3_synack_retrans.pcap'), c.out)

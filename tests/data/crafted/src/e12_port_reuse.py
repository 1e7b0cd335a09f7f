"""e12: the same 4-tuple used again.

10.0.0.1:40000 <-> 10.0.0.2:80: a connection closes (FIN both ways), then 2 s later a SYN
with a NEW ISN opens a second one on the same ports -> two streams (the second is reset).
10.0.0.1:40001 <-> 10.0.0.2:80: after the close, a SYN with the SAME ISN as before ->
still the first stream (Wireshark: a retransmitted SYN), so one stream.
"""
from tcpgen import *

a = Conv('10.0.0.1', 40000, '10.0.0.2', 80)
a.C(1.000, 1000, 0, S)
a.S(1.010, 5000, 1001, S | A)
a.C(1.020, 1001, 5001, A)
a.C(1.030, 1001, 5001, P | A, data=b'a' * 100)
a.S(1.040, 5001, 1101, P | A, data=b'b' * 100)
a.C(1.050, 1101, 5101, F | A)
a.S(1.060, 5101, 1102, F | A)
a.C(1.070, 1102, 5102, A)
a.C(3.000, 900000, 0, S)          # new ISN: a new connection on the same ports
a.S(3.010, 700000, 900001, S | A)
a.C(3.020, 900001, 700001, A)
a.C(3.030, 900001, 700001, P | A, data=b'c' * 10)
a.S(3.040, 700001, 900011, R | A)

b = Conv('10.0.0.1', 40001, '10.0.0.2', 80)
b.C(1.500, 2000, 0, S)
b.S(1.510, 6000, 2001, S | A)
b.C(1.520, 2001, 6001, A)
b.C(1.530, 2001, 6001, F | A)
b.S(1.540, 6001, 2002, F | A)
b.C(1.550, 2002, 6002, A)
b.C(3.500, 2000, 0, S)            # same ISN again: a retransmission in the same stream

write(crafted_path('e12_port_reuse.pcap'), sorted(a.out + b.out))

"""e9: a RST in the middle of a transfer.

Stream 0 (port 40000): the server answers with RST+ACK while data flows -> reset.
Stream 1 (port 40001): the client sends a bare RST (no ACK) -> reset.
"""
from tcpgen import *

a = Conv('10.0.0.1', 40000, '10.0.0.2', 80)
a.C(1.000, 1000, 0, S)
a.S(1.010, 5000, 1001, S | A)
a.C(1.020, 1001, 5001, A)
a.C(1.030, 1001, 5001, P | A, data=b'a' * 100)
a.S(1.040, 5001, 1101, A)
a.C(1.050, 1101, 5001, P | A, data=b'a' * 100)
a.S(1.060, 5001, 1201, R | A)

b = Conv('10.0.0.1', 40001, '10.0.0.2', 80)
b.C(2.000, 1000, 0, S)
b.S(2.010, 5000, 1001, S | A)
b.C(2.020, 1001, 5001, A)
b.C(2.030, 1001, 5001, P | A, data=b'a' * 100)
b.S(2.040, 5001, 1101, P | A, data=b'b' * 100)
b.C(2.050, 1101, 0, R)

write(crafted_path('e9_rst_midstream.pcap'), sorted(a.out + b.out))

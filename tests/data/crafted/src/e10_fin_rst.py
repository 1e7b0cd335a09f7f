"""e10: FIN then RST.

Stream 0 (port 40000): FIN both ways, then a RST from the client -> complete.
Stream 1 (port 40001): the client's FIN is acked, then the server resets -> reset.
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
a.C(1.080, 1102, 5102, R | A)

b = Conv('10.0.0.1', 40001, '10.0.0.2', 80)
b.C(2.000, 1000, 0, S)
b.S(2.010, 5000, 1001, S | A)
b.C(2.020, 1001, 5001, A)
b.C(2.030, 1001, 5001, P | A, data=b'a' * 100)
b.C(2.040, 1101, 5001, F | A)
b.S(2.050, 5001, 1102, A)
b.S(2.060, 5001, 1102, R | A)

write(crafted_path('e10_fin_rst.pcap'), sorted(a.out + b.out))

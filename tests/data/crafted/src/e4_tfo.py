"""e4: TCP Fast Open: the SYN carries a cookie option and 18 bytes of data.

The first packet is a pure SYN with payload, so tcp.completeness gets SYN|DATA from it.
The SYN-ACK acknowledges ISN + 1 + 18.
Stream 0 (port 40000): the server answers with data, then FIN both ways.
Stream 1 (port 40001): no other payload than the SYN's: the DATA bit comes from the SYN.
"""
from tcpgen import *

tfo_cookie = bytes([34, 10]) + b'\x11' * 8   # option 34, 8-byte cookie
req = b'GET / HTTP/1.1\r\n\r\n'
n = len(req)

c = Conv('10.0.0.1', 40000, '10.0.0.2', 80)
c.C(1.000, 1000, 0, S, win=64240, data=req, opts=mss(1460) + tfo_cookie)
c.S(1.010, 5000, 1001 + n, S | A, win=65160, opts=mss(1460))
c.C(1.020, 1001 + n, 5001, A)
c.S(1.030, 5001, 1001 + n, P | A, data=b'r' * 100)
c.C(1.040, 1001 + n, 5101, A)
c.C(1.050, 1001 + n, 5101, F | A)
c.S(1.060, 5101, 1002 + n, F | A)
c.C(1.070, 1002 + n, 5102, A)

d = Conv('10.0.0.1', 40001, '10.0.0.2', 80)
d.C(2.000, 3000, 0, S, win=64240, data=req, opts=mss(1460) + tfo_cookie)
d.S(2.010, 7000, 3001 + n, S | A, win=65160, opts=mss(1460))
d.C(2.020, 3001 + n, 7001, A)
d.C(2.050, 3001 + n, 7001, F | A)
d.S(2.060, 7001, 3002 + n, F | A)
d.C(2.070, 3002 + n, 7002, A)

write(crafted_path('e4_tfo.pcap'), sorted(c.out + d.out))

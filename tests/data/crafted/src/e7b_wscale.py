"""e7b: window scaling with the handshake seen.

Stream 0 (port 40000): SYN shift 7, SYN-ACK shift 2: windows after the handshake are
scaled (x128 client, x4 server); the SYN windows are not.
Stream 1 (port 40001): SYN with shift 7, SYN-ACK without the option: no scaling at all.
Stream 2 (port 40002): SYN without the option, SYN-ACK with shift 5: no scaling at all.
Stream 3 (port 40003): capture starts at the SYN-ACK (shift 3): the server's windows are
scaled, the client's scale stays unknown (raw windows).
"""
from tcpgen import *

def body(c, t):
    c.C(t + .020, 1001, 5001, A, win=502)
    c.C(t + .030, 1001, 5001, P | A, win=502, data=b'a' * 100)
    c.S(t + .040, 5001, 1101, A, win=300)
    c.S(t + .050, 5001, 1101, P | A, win=280, data=b'b' * 50)
    c.C(t + .060, 1101, 5051, A, win=400)
    c.C(t + .070, 1101, 5051, F | A, win=400)
    c.S(t + .080, 5051, 1102, F | A, win=280)
    c.C(t + .090, 1102, 5052, A, win=400)

a = Conv('10.0.0.1', 40000, '10.0.0.2', 80)
a.C(1.000, 1000, 0, S, win=64240, opts=mss(1460) + wscale(7))
a.S(1.010, 5000, 1001, S | A, win=65160, opts=mss(1460) + wscale(2))
body(a, 1.0)

b = Conv('10.0.0.1', 40001, '10.0.0.2', 80)
b.C(2.000, 1000, 0, S, win=64240, opts=mss(1460) + wscale(7))
b.S(2.010, 5000, 1001, S | A, win=65160, opts=mss(1460))
body(b, 2.0)

c = Conv('10.0.0.1', 40002, '10.0.0.2', 80)
c.C(3.000, 1000, 0, S, win=64240, opts=mss(1460))
c.S(3.010, 5000, 1001, S | A, win=65160, opts=mss(1460) + wscale(5))
body(c, 3.0)

d = Conv('10.0.0.1', 40003, '10.0.0.2', 80)
d.S(4.010, 5000, 1001, S | A, win=65160, opts=mss(1460) + wscale(3))
body(d, 4.0)

write(crafted_path('e7b_wscale.pcap'), sorted(a.out + b.out + c.out + d.out))

"""e13: a long connection and a quiet one (for interim records and the idle timeout).

Stream 0 (port 40000): from 1 s to ~42 s, one request/ack pair every second, then a close.
Never quiet for more than 1 s.
Stream 1 (port 40001): handshake and data at 2 s, then quiet until 20 s (17.5 s gap), then
more data and a close. With an idle timeout under 17.5 s we emit it as 'timeout' and the
packets from 20 s on start a new record; Wireshark keeps one stream.
All gaps stay far below the default idle timeout (300 s), so with default settings every
stream matches tshark.
"""
from tcpgen import *

a = Conv('10.0.0.1', 40000, '10.0.0.2', 80)
a.C(1.000, 1000, 0, S)
a.S(1.010, 5000, 1001, S | A)
a.C(1.020, 1001, 5001, A)
seq = 1001
for i in range(40):
    t = 2.0 + i
    a.C(t, seq, 5001, P | A, data=b'a' * 100)
    seq += 100
    a.S(t + .010, 5001, seq, A)
a.C(42.5, seq, 5001, F | A)
a.S(42.51, 5001, seq + 1, F | A)
a.C(42.52, seq + 1, 5002, A)

b = Conv('10.0.0.1', 40001, '10.0.0.2', 80)
b.C(2.100, 7000, 0, S)
b.S(2.110, 9000, 7001, S | A)
b.C(2.120, 7001, 9001, A)
b.C(2.500, 7001, 9001, P | A, data=b'b' * 100)
b.S(2.510, 9001, 7101, A)
b.C(20.000, 7101, 9001, P | A, data=b'b' * 100)   # after a 17.5 s gap
b.S(20.010, 9001, 7201, A)
b.C(20.500, 7201, 9001, F | A)
b.S(20.510, 9001, 7202, F | A)
b.C(20.520, 7202, 9002, A)

write(crafted_path('e13_long_idle.pcap'), sorted(a.out + b.out))

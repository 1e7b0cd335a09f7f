"""e1: the capture starts in the middle of connections (no SYN seen).

Stream 0 (10.0.0.1:40001 <-> 10.0.0.2:443): the first packet is the server's data; no
FIN -> open_at_end. Roles are a guess: the well-known port (443) is the server's.
Stream 1 (10.0.0.3:50000 <-> 10.0.0.2:22): client data first, then FIN both ways ->
complete.
Stream 2 (10.0.0.5:50001 <-> 10.0.0.4:45000): no well-known port on either side -> the
first sender (10.0.0.5:50001) is taken as the client.
"""
from tcpgen import *

a = Conv('10.0.0.1', 40001, '10.0.0.2', 443)
a.S(1.000, 5001, 1001, P | A, data=b's' * 100)   # server's data opens the capture
a.C(1.010, 1001, 5101, A)
a.C(1.020, 1001, 5101, P | A, data=b'c' * 50)
a.S(1.030, 5101, 1051, A)
a.S(1.040, 5101, 1051, P | A, data=b's' * 200)
a.C(1.050, 1051, 5301, A)

b = Conv('10.0.0.3', 50000, '10.0.0.2', 22)
b.C(2.000, 20001, 30001, P | A, data=b'c' * 40)
b.S(2.010, 30001, 20041, P | A, data=b's' * 60)
b.C(2.020, 20041, 30061, F | A)
b.S(2.030, 30061, 20042, F | A)
b.C(2.040, 20042, 30062, A)

c = Conv('10.0.0.5', 50001, '10.0.0.4', 45000)
c.C(3.000, 7001, 9001, P | A, data=b'x' * 10)
c.S(3.010, 9001, 7011, A)

write(crafted_path('e1_midstream.pcap'), sorted(a.out + b.out + c.out))

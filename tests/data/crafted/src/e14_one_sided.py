"""e14: one-sided captures (asymmetric routing: we see one direction only).

Stream 0 (10.0.0.1:40000 -> 10.0.0.2:80): only the client's packets: SYN, ACK, data with
an RTO retransmission, ACKs of server data we never see, FIN.
Stream 1 (10.0.0.3:40001 <- 10.0.0.2:80): only the server's packets: SYN-ACK, data with a
retransmission, FIN. The SYN-ACK tells the roles.
"""
from tcpgen import *

a = Conv('10.0.0.1', 40000, '10.0.0.2', 80)
a.C(1.000, 1000, 0, S, win=64240, opts=mss(1460) + wscale(7))
a.C(1.020, 1001, 5001, A, win=502)
a.C(1.030, 1001, 5001, P | A, win=502, data=b'a' * 100)
a.C(1.031, 1101, 5001, P | A, win=502, data=b'a' * 100)
a.C(1.032, 1201, 5001, P | A, win=502, data=b'a' * 100)
a.C(1.300, 1101, 5001, P | A, win=502, data=b'a' * 100)   # RTO retransmission
a.C(1.400, 1301, 5001, P | A, win=502, data=b'a' * 100)
a.C(1.450, 1401, 5501, A, win=500)                          # acks server data unseen
a.C(1.460, 1401, 6001, A, win=498)
a.C(1.470, 1401, 6001, A, win=498)                          # dup ack
a.C(1.500, 1401, 6001, F | A, win=498)

b = Conv('10.0.0.3', 40001, '10.0.0.2', 80)
b.S(2.010, 5000, 1001, S | A, win=65160, opts=mss(1460) + wscale(7))
b.S(2.050, 5001, 1101, P | A, win=509, data=b's' * 1000)
b.S(2.051, 6001, 1101, P | A, win=509, data=b's' * 1000)
b.S(2.400, 5001, 1101, P | A, win=509, data=b's' * 1000)   # retransmission
b.S(2.500, 7001, 1101, F | A, win=509)

write(crafted_path('e14_one_sided.pcap'), sorted(a.out + b.out))

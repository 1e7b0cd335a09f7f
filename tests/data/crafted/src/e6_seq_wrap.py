"""e6: sequence numbers that wrap past 2^32.

Stream 0 (port 40000): the client's ISN is 2^32 - 3000, the server's 2^32 - 50; both
data streams cross 2^32. The segment right after the wrap (seq 1) is lost, the server
sends dup ACKs of ack=1, the client fast-retransmits it; later a plain RTO retransmission.
Stream 1 (port 40001): the client's data ends exactly at 2^32, so nextseq becomes 0
("not known yet" in Wireshark's bookkeeping); a segment at seq 0 is then retransmitted.
"""
from tcpgen import *

M = 2 ** 32
c = Conv('10.0.0.1', 40000, '10.0.0.2', 80)
isn_c, isn_s = M - 3000, M - 50
c.C(1.000, isn_c, 0, S)
c.S(1.010, isn_s, isn_c + 1, S | A)
c.C(1.020, isn_c + 1, isn_s + 1, A)
d0 = isn_c + 1
sseq = isn_s + 1
for i in range(6):   # seqs 2^32-2999, -1999, -999, 1, 1001, 2001; seq 1 is lost downstream
    c.C(1.030 + i * 0.001, d0 + 1000 * i, sseq, A, data=b'd' * 1000)
c.S(1.040, sseq, d0 + 1000, A)
c.S(1.041, sseq, d0 + 2000, A)
c.S(1.042, sseq, d0 + 3000, A)   # ack = 1
c.S(1.043, sseq, d0 + 3000, A)   # dup ack (seg at 1001 arrived)
c.S(1.044, sseq, d0 + 3000, A)   # dup ack (seg at 2001 arrived)
c.C(1.050, d0 + 3000, sseq, A, data=b'd' * 1000)   # fast retransmission of seq 1
c.S(1.060, sseq, d0 + 6000, A)   # ack = 3001
c.S(1.070, sseq, d0 + 6000, P | A, data=b's' * 100)   # server data wraps: ends at 51
c.C(1.080, d0 + 6000, sseq + 100, A)
c.C(1.090, d0 + 6000, sseq + 100, A, data=b'e' * 1000)   # seq 3001
c.C(1.400, d0 + 6000, sseq + 100, A, data=b'e' * 1000)   # RTO retransmission
c.S(1.410, sseq + 100, d0 + 7000, A)
c.C(1.500, d0 + 7000, sseq + 100, F | A)
c.S(1.510, sseq + 100, d0 + 7001, F | A)
c.C(1.520, d0 + 7001, sseq + 101, A)

z = Conv('10.0.0.1', 40001, '10.0.0.2', 80)
isn = M - 1001
z.C(2.000, isn, 0, S)
z.S(2.010, 7000, isn + 1, S | A)
z.C(2.020, isn + 1, 7001, A)
z.C(2.030, isn + 1, 7001, A, data=b'z' * 1000)   # ends at 2^32 -> 0
z.C(2.031, 0, 7001, A, data=b'z' * 1000)         # seq 0
z.S(2.040, 7001, 0, A)                           # ack 0
z.S(2.041, 7001, 1000, A)
z.C(2.300, 0, 7001, A, data=b'z' * 1000)         # retransmission of seq 0 (already acked)
z.C(2.400, 1000, 7001, A, data=b'y' * 100)
z.C(2.700, 1000, 7001, A, data=b'y' * 100)       # RTO retransmission
z.S(2.710, 7001, 1100, A)
z.C(2.800, 1100, 7001, F | A)
z.S(2.810, 7001, 1101, F | A)
z.C(2.820, 1101, 7002, A)

write(crafted_path('e6_seq_wrap.pcap'), sorted(c.out + z.out))

from tcpgen import *
c = Conv()
# no handshake: ooo threshold 3ms
c.C(1.000,1001,5001,A,data=b'a'*100)
c.C(1.001,1201,5001,A,data=b'a'*100)   # lost
c.C(1.002,1101,5001,A,data=b'a'*100)   # ooo (1ms after)
c.C(1.010,1301,5001,A,data=b'a'*100)
c.C(1.011,1501,5001,A,data=b'a'*100)   # lost 1401
c.C(1.020,1401,5001,A,data=b'a'*100)   # 9ms > 3ms -> retransmission
c.S(1.030,5001,1601,A)
c.S(1.031,5001,1601,A)  # dup1
c.S(1.032,5001,1601,A,win=2000)  # window update (not dup)
c.S(1.033,5001,1601,A,win=2000)  # dup? lastnondupack
c.S(1.034,5001,1601,A,win=2000)  # dup
c.C(1.060,1601,5001,A,data=b'b'*100)   # new data
c.C(1.061,1501,5001,A,data=b'b'*100)   # retrans of acked? seq+len=1601<=lastack -> spurious
c.C(1.062,1700,5001,A,data=b'bb')       # seq==nextseq-1 with len 2: not retrans
c.S(1.070,5001,1702,A)
c.S(1.071,5001,1702,A)
c.S(1.072,5001,1702,A)
c.C(1.100,1702,5001,A,data=b'b'*10)
c.C(1.101,1712,5001,A,data=b'b'*10)
c.S(1.110,5001,1712,A)
c.S(1.111,5001,1712,A)
c.S(1.112,5001,1712,A)
c.C(1.140,1712,5001,A,data=b'b'*10)   # 28ms after last dup ack -> not fast
write('t7.pcap', c.out)

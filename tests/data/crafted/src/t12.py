from tcpgen import *
c = Conv()
c.C(1.0,1000,0,S); c.S(1.05,5000,1001,S|A); c.C(1.10,1001,5001,A)   # iRTT = 100ms
c.C(1.20,1001,5001,A,data=b'a'*100)
c.C(1.21,1201,5001,A,data=b'a'*100)
c.C(1.26,1101,5001,A,data=b'a'*100)   # 50ms after nextseqtime -> OOO (<100ms)
c.C(1.27,1401,5001,A,data=b'a'*100)
c.C(1.40,1301,5001,A,data=b'a'*100)   # 130ms -> retransmission
c.C(1.41,1300,5001,A,data=b'a'*101)   # seq = nextseq-1? no: nextseq=1501
write('t12.pcap', c.out)

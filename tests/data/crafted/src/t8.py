from tcpgen import *
c = Conv()
c.C(1.0,1000,0,S,data=b'tfo'); c.S(1.01,5000,1004,S|A); c.C(1.02,1004,5001,A)
c.C(1.03,1004,5001,F|A)          # FIN
c.C(1.5,1004,5001,F|A)           # FIN retrans
c.S(1.51,5001,1005,A)            # ack FIN
c.S(1.52,5001,1005,F)            # FIN without ACK flag
c.C(1.53,1005,5002,A)
d = Conv(cp=40001)
d.C(2.0,1000,0,S); d.S(2.01,5000,1001,S|A); d.C(2.02,1001,5001,R)   # RST no ACK
e = Conv(cp=40002)
e.C(3.0,1000,0,S); e.S(3.01,5000,1001,R|A)   # refused
write('t8.pcap', sorted(c.out+d.out+e.out))

from tcpgen import *
c = Conv()
t=1.0
c.C(t,1000,0,S); c.S(t+.01,5000,1001,S|A); c.C(t+.02,1001,5001,A)
c.C(t+.03,1001,5001,A,data=b'a'*100); c.C(t+.04,1201,5001,A,data=b'b'*100)
c.C(t+1,1000,0,S)
c.C(t+1.1,1201,5001,A,data=b'b'*100)
write('t4.pcap', c.out)

from tcpgen import *
c = Conv()
t=1.0
c.C(t,1000,0,S); c.S(t+.01,5000,1001,S|A); c.C(t+.02,1001,5001,A)
c.C(t+.05,6101,5001,R|A)
c.C(t+1,1000,0,S); c.S(t+1.01,5000,1001,S|A); c.C(t+1.02,1001,5001,A)
c.C(t+1.03,1001,5001,P|A,data=b'z'*100)
write('t3.pcap', c.out)

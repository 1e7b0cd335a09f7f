from tcpgen import *
c = Conv()
t=1.0
c.C(t,1000,0,S); c.C(t+1,1000,0,S); c.C(t+3,1000,0,S)   # SYN retrans x2
c.S(t+3.01,5000,1001,S|A); c.C(t+3.02,1001,5001,A)
c.C(t+3.03,1001,5001,P|A,data=b'x'*100); c.S(t+3.04,5001,1101,A)
# RST with seq far ahead (seq = ack received style)
c.C(t+3.05,6101,5001,R)
# SYN same ISN again
c.C(t+4,1000,0,S); c.S(t+4.01,5000,1001,S|A); c.C(t+4.02,1001,5001,A)
c.C(t+4.03,1001,5001,P|A,data=b'z'*100)
write('t2.pcap', c.out)

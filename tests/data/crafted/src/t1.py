from tcpgen import *
c = Conv()
t=1.0
# conv 1
c.C(t,1000,0,S,opts=mss(1460)); c.S(t+.010,5000,1001,S|A); c.C(t+.020,1001,5001,A)
c.C(t+.030,1001,5001,P|A,data=b'x'*100); c.S(t+.040,5001,1101,A)
c.S(t+.050,5001,1101,P|A,data=b'y'*50); c.C(t+.060,1101,5051,A)
c.C(t+.070,1101,5051,F|A); c.S(t+.080,5051,1102,F|A); c.C(t+.090,1102,5052,A)
# conv 2 : new SYN different ISN
t=2.0
c.C(t,9000,0,S); c.S(t+.010,7000,9001,S|A); c.C(t+.020,9001,7001,A)
c.C(t+.030,9001,7001,R|A)
# SYN with same ISN as conv2 after RST
t=3.0
c.C(t,9000,0,S); c.S(t+.010,7000,9001,S|A); c.C(t+.020,9001,7001,A)
# SYN/ACK with different seq (no SYN)
t=4.0
c.S(t,123456,9001,S|A)
write('t1.pcap', c.out)

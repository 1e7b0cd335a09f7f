from tcpgen import *
out=[]
# A: midstream, no handshake
a = Conv(cp=40001)
a.C(1.0,1000,5000,A,win=500,data=b'x'*10); a.S(1.01,5000,1010,A,win=600)
# B: SYN w/o WS, SYNACK with WS
b = Conv(cp=40002)
b.C(2.0,1000,0,S,win=500); b.S(2.01,5000,1001,S|A,win=600,opts=wscale(5)); b.C(2.02,1001,5001,A,win=500); b.S(2.03,5001,1001,A,win=600)
# C: SYN with WS, SYNACK w/o WS
cc = Conv(cp=40003)
cc.C(3.0,1000,0,S,win=500,opts=wscale(5)); cc.S(3.01,5000,1001,S|A,win=600); cc.C(3.02,1001,5001,A,win=500); cc.S(3.03,5001,1001,A,win=600)
# D: SYN missing, SYNACK with WS
d = Conv(cp=40004)
d.S(4.01,5000,1001,S|A,win=600,opts=wscale(5)); d.C(4.02,1001,5001,A,win=500); d.S(4.03,5001,1001,A,win=600)
# E: SYN with WS 3, SYNACK with WS 2, window full
e = Conv(cp=40005)
e.C(5.0,1000,0,S,win=500,opts=wscale(3)); e.S(5.01,5000,1001,S|A,win=25,opts=wscale(2)); e.C(5.02,1001,5001,A,win=500);
e.C(5.03,1001,5001,A,win=500,data=b'a'*60)
e.S(5.04,5001,1061,A,win=25);
e.C(5.05,1061,5001,A,win=500,data=b'a'*100)   # lastack 1061 + 25<<2=100 -> 1161: window full
# F: SYN with WS, SYNACK with WS 14+ (15)
f = Conv(cp=40006)
f.C(6.0,1000,0,S,win=500,opts=wscale(15)); f.S(6.01,5000,1001,S|A,win=600,opts=wscale(15)); f.C(6.02,1001,5001,A,win=1)
write('t6.pcap', sorted(a.out+b.out+cc.out+d.out+e.out+f.out))

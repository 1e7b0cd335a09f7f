from tcpgen import *
c = Conv()
t=1.0
c.C(t,1000,0,S,win=64240,opts=mss(1460)+wscale(7)); c.S(t+.01,5000,1001,S|A,win=65160,opts=mss(1460)+wscale(7)); c.C(t+.02,1001,5001,A,win=502)
# client sends 4 segments, 2nd lost
for i in range(4):
    if i==1: continue
    c.C(t+.03+i*0.001,1001+i*100,5001,A,win=502,data=b'a'*100)
c.S(t+.040,5001,1101,A,win=509)            # ack seg1
c.S(t+.041,5001,1101,A,win=509)            # dup1
c.S(t+.042,5001,1101,A,win=509)            # dup2
c.C(t+.045,1101,5001,A,win=502,data=b'a'*100)  # fast retrans (within 20ms of last dup ack)
c.S(t+.050,5001,1401,A,win=509)            # ack all
c.C(t+.300,1101,5001,A,win=502,data=b'a'*100)  # spurious retrans
c.C(t+.400,1401,5001,A,win=502,data=b'b'*100)
c.C(t+.401,1601,5001,A,win=502,data=b'd'*100)  # hole 1501..1601
c.C(t+.402,1501,5001,A,win=502,data=b'c'*100)  # out of order (within iRTT 20ms)
c.S(t+.410,5001,1701,A,win=509)
c.C(t+.900,1601,5001,A,win=502,data=b'd'*100)  # plain retrans (acked) -> spurious
c.C(t+1.0,1701,5001,A,win=502,data=b'e'*100)
c.C(t+1.5,1701,5001,A,win=502,data=b'e'*100)   # RTO retrans (unacked)
c.S(t+1.51,5001,1801,A,win=509)
c.S(t+1.52,5001,1801,A,win=600)            # window update
c.C(t+2.0,1800,5001,A,win=502)             # keepalive (seq = nextseq-1, len 0)
c.S(t+2.01,5001,1801,A,win=600)            # keepalive ack
c.C(t+2.5,1800,5001,A,win=502,data=b'k')   # keepalive len1
c.S(t+2.6,5001,1801,A,win=0)               # zero window
c.C(t+2.7,1801,5001,A,win=502,data=b'p')   # zero window probe
c.S(t+2.71,5001,1801,A,win=0)              # zwp ack
write('t5.pcap', c.out)

from tcpgen import *
c = Conv()
c.C(1.0,1001,5001,A,data=b'a'*10)
c.S(1.01,5001,1011,A,win=100)
c.S(1.02,5001,1011,A,win=0)     # zero window (no window update since win==0)
c.S(1.03,5001,1011,A,win=0)     # zero window again (not dup since window 0)
c.S(1.04,5001,1011,A,win=100)   # window update
c.S(1.05,5001,1011,A,win=100,data=b'q'*5)  # data
c.S(1.06,5006,1011,A,win=100)   # pure ack after data: seq==nextseq ack==lastack window same -> dup ack
write('t9.pcap', c.out)

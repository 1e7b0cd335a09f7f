from tcpgen import *
import struct
c = Conv()
c.C(1.0,1000,0,S); c.S(1.01,5000,1001,S|A); c.C(1.02,1001,5001,A)
# ICMP dest unreachable from router 10.0.0.254 to client, quoting a client->server TCP packet (to a different port -> no existing conv)
def icmp_err(inner):
    quoted = inner[:28]
    body = struct.pack('!BBHI',3,3,0,0)+quoted
    ck = csum(body); body = body[:2]+struct.pack('!H',ck)+body[4:]
    tot=20+len(body)
    iph = struct.pack('!BBHHHBBH4s4s',0x45,0,tot,0,0,64,1,0,ip2b('10.0.0.254'),ip2b('10.0.0.1'))
    iph = iph[:10]+struct.pack('!H',csum(iph))+iph[12:]
    return iph+body
inner = pkt('10.0.0.1',40000,'10.0.0.2',81,777,0,S,1000)
c.out.append((1.03, icmp_err(inner)))
inner2 = pkt('10.0.0.1',40000,'10.0.0.2',80,1001,5001,A,1000,b'a'*10)
c.out.append((1.04, icmp_err(inner2)))
c.C(1.05,1001,5001,A,data=b'a'*10)
write('t10.pcap', c.out)

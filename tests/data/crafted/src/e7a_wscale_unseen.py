"""e7a: window scaling when the handshake was not captured.

No SYN: Wireshark's window scale is -1 ("unknown"), tcp.window_size is the raw field, and
we report window_scale null with unscaled min/avg windows.
"""
from tcpgen import *

c = Conv()
c.C(1.000, 1001, 5001, P | A, win=502, data=b'a' * 100)
c.S(1.010, 5001, 1101, A, win=229)
c.C(1.020, 1101, 5001, P | A, win=300, data=b'a' * 100)
c.S(1.030, 5001, 1201, P | A, win=1000, data=b'b' * 10)
c.C(1.040, 1201, 5011, A, win=800)
c.S(1.050, 5011, 1201, A, win=5)
write(crafted_path('e7a_wscale_unseen.pcap'), c.out)

#!/usr/bin/env python3
"""Long-lived UDP clients: one datagram from each of COUNT fixed source ports (FIRST, FIRST+1,
...) to IP:PORT, and one line per client: "SPORT ANSWER", where ANSWER is the pod that
answered ("pod1"), or "timeout". Sending again from the same source port reuses the client's
conntrack entry. Bounded: at most COUNT datagrams, 1.5 s each.
Usage: udp_clients.py IP PORT FIRST COUNT"""
import socket, sys
ip, port, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for sport in range(first, first + count):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", sport)); s.settimeout(1.5)
    try:
        s.connect((ip, port)); s.send(b"hello"); answer = s.recv(256).decode().split()[0]
    except socket.timeout:
        answer = "timeout"
    except OSError:
        answer = "refused"
    s.close()
    print(sport, answer, flush=True)

#!/usr/bin/env python3
"""Sends one UDP datagram to IP:PORT from a fixed source port and prints who answered
("pod1 ..."), or "timeout" / "refused". Running it again with the same source port reuses the
same conntrack entry, as a long-lived UDP client would. Usage: udp_once.py IP PORT SPORT"""
import socket, sys
ip, port, sport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
v6 = ":" in ip
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::" if v6 else "0.0.0.0", sport)); s.settimeout(1.5)
try:
    s.connect((ip, port)); s.send(b"hello"); print(s.recv(256).decode().strip())
except socket.timeout:
    print("timeout")
except OSError:
    print("refused")

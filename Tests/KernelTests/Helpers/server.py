#!/usr/bin/env python3
"""Test pod: answers every TCP connection and UDP datagram on PORT (IPv4 and IPv6) with "NAME PEER-IP";
then echoes the lines of a TCP client that start with "ping".

Usage: server.py NAME PORT [SECONDS]. Exits by itself after SECONDS (default 300)."""
import socket, sys, threading, time

name, port = sys.argv[1], int(sys.argv[2])
deadline = time.time() + (float(sys.argv[3]) if len(sys.argv) > 3 else 300)

def bound(family, kind):
    s = socket.socket(family, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
    return s

def serve(c, peer):
    try:
        c.sendall(f"{name} {peer[0]}\n".encode())
        # Let the client close first, so TIME_WAIT stays on the client's side and a busy
        # test does not run into its own old connections here. A held connection's "ping"
        # lines are echoed, so its client sees it still works; an idle one ends after 2 s.
        c.settimeout(2)
        while time.time() < deadline:
            d = c.recv(256)
            if not d: break
            if d.startswith(b"ping"): c.sendall(d)
    except OSError: pass
    finally: c.close()

def tcp(family=socket.AF_INET):
    s = bound(family, socket.SOCK_STREAM); s.listen(128); s.settimeout(1)
    while time.time() < deadline:
        try: c, peer = s.accept()
        except socket.timeout: continue
        threading.Thread(target=serve, args=(c, peer), daemon=True).start()

def udp(family=socket.AF_INET):
    s = bound(family, socket.SOCK_DGRAM); s.settimeout(1)
    while time.time() < deadline:
        try: _, peer = s.recvfrom(2048)
        except socket.timeout: continue
        s.sendto(f"{name} {peer[0]}\n".encode(), peer)

# IPv4 and IPv6 on separate sockets, so an IPv4 peer prints as 198.19.1.1, not ::ffff:198.19.1.1.
threading.Thread(target=udp, daemon=True).start()
threading.Thread(target=udp, args=(socket.AF_INET6,), daemon=True).start()
threading.Thread(target=tcp, args=(socket.AF_INET6,), daemon=True).start()
print("ready", flush=True)
tcp()

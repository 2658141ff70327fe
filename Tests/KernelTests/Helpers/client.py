#!/usr/bin/env python3
"""Test client: makes COUNT new TCP connections (or UDP exchanges, each from a new socket) to
IP:PORT and prints one JSON line: {"answers": {name: count}, "sources": {ip: count}, "refused": n,
"timeouts": n, "seconds": s}. Every attempt is bounded by a 2 s timeout; TCP connections are
reset on close (SO_LINGER 0).

Usage: client.py tcp|udp IP PORT COUNT [SOURCE-IP]"""
import json, socket, struct, sys, time

proto, ip, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
source = (sys.argv[5], 0) if len(sys.argv) > 5 else None
answers, sources, refused, timeouts = {}, {}, 0, 0
start = time.time()
for _ in range(count):
    try:
        if proto == "tcp":
            s = socket.create_connection((ip, port), timeout=2, source_address=source)
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(256)
                if not chunk: break
                data += chunk
            # Reset on close: no TIME_WAIT here to collide with a later connection's port.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        else:
            s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
            if source: s.bind(source)
            s.connect((ip, port)); s.send(b"hello"); data = s.recv(256); s.close()
        name, src = data.decode().split()
        answers[name] = answers.get(name, 0) + 1
        sources[src] = sources.get(src, 0) + 1
    except ConnectionRefusedError:
        refused += 1
    except (socket.timeout, TimeoutError):
        timeouts += 1
    except OSError as e:
        # ECONNREFUSED, EHOSTUNREACH (ICMP reject), EPERM (rejected on the way out of this host)
        if e.errno in (1, 111, 113): refused += 1
        else: raise
print(json.dumps({"answers": answers, "sources": sources, "refused": refused,
                  "timeouts": timeouts, "seconds": round(time.time() - start, 3)}))

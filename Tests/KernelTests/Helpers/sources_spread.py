#!/usr/bin/env python3
"""Many clients, one per source address: for each of COUNT sources 198.18.<A + i // 200>.<1 + i % 200>
(which the caller has put on this namespace), REPEAT new TCP connections to IP:PORT, each reset on
close (SO_LINGER 0). Prints one JSON line: {"choices": {source: pod, or "mixed" when its
connections reached different pods}, "refused": n, "timeouts": n}. Every attempt is bounded by
a 2 s timeout.

Usage: sources_spread.py IP PORT REPEAT A COUNT"""
import json, socket, struct, sys

ip, port, repeat, a, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
choices, refused, timeouts = {}, 0, 0
for i in range(count):
    src = "198.18.%d.%d" % (a + i // 200, 1 + i % 200)
    seen = set()
    for _ in range(repeat):
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.settimeout(2)
            s.bind((src, 0))
            s.connect((ip, port))
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(256)
                if not chunk: break
                data += chunk
            s.close()
            seen.add(data.decode().split()[0])
        except (socket.timeout, TimeoutError):
            timeouts += 1
        except OSError as e:
            if e.errno in (1, 111, 113): refused += 1
            else: raise
    if seen:
        choices[src] = seen.pop() if len(seen) == 1 else "mixed"
print(json.dumps({"choices": choices, "refused": refused, "timeouts": timeouts}))

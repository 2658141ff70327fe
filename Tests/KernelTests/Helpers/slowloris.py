#!/usr/bin/env python3
"""Opens COUNT connections to HOST:PORT that each send half a request head and then nothing,
holds them SECONDS, and prints JSON: how many connected and how many the server closed.
Usage: slowloris.py HOST PORT COUNT SECONDS"""
import json, socket, sys, time
host, port, count, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
socks, deadline = [], time.time() + 20
for _ in range(count):
    if time.time() > deadline:
        break
    try:
        s = socket.create_connection((host, port), timeout=1)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)
    except OSError:
        pass
print("holding", flush=True)
time.sleep(seconds)
closed = 0
for s in socks:
    s.setblocking(False)
    try:
        if s.recv(1) == b"":
            closed += 1
    except BlockingIOError:
        pass
    except OSError:
        closed += 1
print(json.dumps({"connected": len(socks), "closedByServer": closed}), flush=True)

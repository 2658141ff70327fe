#!/usr/bin/env python3
"""Holds COUNT TCP connections to IP:PORT open for SECONDS, sending "ping" on each every 0.2 s
and expecting the test server's echo within 2 s; a connection that misses one is broken.
Prints one JSON line: {"held": n, "broken": n, "pings": n, "answers": {name: count}, "errors": {...}}.
Usage: held_client.py IP PORT COUNT SECONDS"""
import json, socket, struct, sys, time
ip, port, count, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
conns, answers, errors = [], {}, {}
def err(e):
    k = type(e).__name__ + ":" + str(getattr(e, "errno", ""))
    errors[k] = errors.get(k, 0) + 1
for _ in range(count):
    try:
        s = socket.create_connection((ip, port), timeout=2)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        name = s.recv(256).decode().split()[0]
        answers[name] = answers.get(name, 0) + 1
        conns.append(s)
    except OSError as e:
        err(e)
held, broken, pings = len(conns), count - len(conns), 0
alive = list(conns)
end = time.time() + seconds
while time.time() < end and alive:
    for s in list(alive):
        try:
            s.sendall(b"ping\n")
            got = b""
            while not got.endswith(b"\n"):
                d = s.recv(64)
                if not d: raise ConnectionResetError("closed by peer")
                got += d
            pings += 1
        except OSError as e:
            err(e); broken += 1; alive.remove(s)
    time.sleep(0.2)
for s in conns: s.close()
print(json.dumps({"held": held, "broken": broken, "pings": pings, "answers": answers, "errors": errors}), flush=True)

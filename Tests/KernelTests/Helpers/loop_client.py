#!/usr/bin/env python3
"""Opens new TCP connections to IP:PORT one after another for SECONDS and prints one JSON line:
{"made": n, "failed": n, "answers": {name: count}}. Each attempt is bounded by 1 s.
Usage: loop_client.py IP PORT SECONDS"""
import json, socket, struct, sys, time
ip, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
made = failed = 0
answers = {}
errors = {}
end = time.time() + seconds
while time.time() < end:
    try:
        s = socket.create_connection((ip, port), timeout=1)
        # Reset on close: no TIME_WAIT that a later attempt's source port could run into.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        data = s.recv(256); s.close()
        name = data.decode().split()[0]
        answers[name] = answers.get(name, 0) + 1
        made += 1
    except OSError as e:
        failed += 1
        kind = type(e).__name__ + ":" + str(getattr(e, "errno", ""))
        errors[kind] = errors.get(kind, 0) + 1
print(json.dumps({"made": made, "failed": failed, "answers": answers, "errors": errors}), flush=True)

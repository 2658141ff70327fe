#!/usr/bin/env python3
"""Drives apiserver.py's control port: apictl.py PORT put|delete|compact|drop|stats [JSON]."""
import sys, urllib.request
port, op = sys.argv[1], sys.argv[2]
url = "http://127.0.0.1:%s/%s" % (port, op)
if op == "stats":
    print(urllib.request.urlopen(url, timeout=5).read().decode())
else:
    data = (sys.argv[3] if len(sys.argv) > 3 else "{}").encode()
    urllib.request.urlopen(urllib.request.Request(url, data=data, method="POST"), timeout=5).read()

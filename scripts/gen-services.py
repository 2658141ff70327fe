#!/usr/bin/env python3
"""Writes N Services with M endpoints each (one EndpointSlice per Service) as one YAML stream.

ClusterIPs come from 198.18.128.0/17 and endpoints from 198.19.0.0/16, the test address plan.
Usage: gen-services.py N M > services.yaml"""
import sys

n, m = int(sys.argv[1]), int(sys.argv[2])
out = []
for i in range(n):
    ip = f"198.18.{128 + i // 256}.{i % 256}"
    out.append(f"""apiVersion: v1
kind: Service
metadata: {{name: svc{i}, namespace: bench}}
spec:
  clusterIP: {ip}
  ports: [{{name: http, protocol: TCP, port: 80, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: svc{i}-a, namespace: bench, labels: {{kubernetes.io/service-name: svc{i}}}}}
addressType: IPv4
ports: [{{name: http, protocol: TCP, port: 8080}}]
endpoints:
""")
    for j in range(m):
        k = i * m + j
        out.append(f"  - addresses: [198.19.{k // 250 % 256}.{k % 250 + 2}]\n")
    out.append("---\n")
sys.stdout.write("".join(out))

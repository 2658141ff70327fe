#!/usr/bin/env python3
"""A small Kubernetes API server for svcnat's tests: what svcnat uses of the API machinery, kept
faithful to the documented semantics.

- GET /api/v1/services, /apis/discovery.k8s.io/v1/endpointslices, /api/v1/nodes: lists
  (`{"kind": "ServiceList", "metadata": {"resourceVersion": ...}, "items": [...]}`, items without
  kind/apiVersion), chunked with limit/continue (pages of one snapshot), labelSelector (`!key`,
  `key`, `key=value`) and fieldSelector metadata.name=X.
- ?watch=1&resourceVersion=RV: a chunked stream of ADDED/MODIFIED/DELETED events after RV, and
  BOOKMARK events every second with allowWatchBookmarks; an ERROR event with a 410 Status when
  RV is older than the history kept (after /compact or a restart); ends after timeoutSeconds.
- Authentication: `Authorization: Bearer TOKEN` or a client certificate signed by --client-ca;
  anything else gets 401 with a Status object.
- State (objects and the resourceVersion counter) is saved to --state after each change and
  read back at start, so a restarted server has every object but none of the watch history.

Control, on plain HTTP at 127.0.0.1:CONTROL_PORT (tests only):
  POST /put (an object as JSON, kind decides the collection), POST /delete {"kind","namespace","name"},
  POST /compact (forget the history: older watches get 410), POST /drop (cut every watch stream),
  POST /pause and /resume (watch requests get 503 meanwhile),
  POST /fault {"mode": M}: misbehave, as a broken or hostile server might: "gone" (every watch
  answers 410), "endless" (every list page has a continue token), "longline" (watches send one
  line that never ends), "ctrl" (lists fail with 500 and control characters in the message),
  "" (behave again);
  POST /inject {"path", "type", "object"}: a watch event sent as given (its kind untouched),
  GET /stats (lists and watches served, per collection).

Usage: apiserver.py --port P --control-port C --cert F --key F [--client-ca F] [--token T]
       --state F [--list-delay SECONDS] [--seconds N]
"""
import argparse, json, os, ssl, socket, sys, threading, time, urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--control-port", type=int, required=True)
ap.add_argument("--cert", required=True)
ap.add_argument("--key", required=True)
ap.add_argument("--client-ca")
ap.add_argument("--token")
ap.add_argument("--state", required=True)
ap.add_argument("--list-delay", type=float, default=0)
ap.add_argument("--seconds", type=float, default=300)
ap.add_argument("--max-page", type=int, default=0, help="serve at most this many items per page, whatever the limit")
ap.add_argument("--no-save", action="store_true", help="do not write --state after each change (benchmarks)")
args = ap.parse_args()

COLLECTIONS = {
    "/api/v1/services": ("Service", "v1"),
    "/apis/discovery.k8s.io/v1/endpointslices": ("EndpointSlice", "discovery.k8s.io/v1"),
    "/api/v1/nodes": ("Node", "v1"),
}
PATH_OF_KIND = {kind: path for path, (kind, _) in COLLECTIONS.items()}

lock = threading.Condition()
objects = {path: {} for path in COLLECTIONS}   # path -> key -> object
# path -> key -> the object's JSON, encoded once when it is stored (kube-apiserver's watch cache
# also serves lists from objects it has serialized), so that a list of 10,000 costs the server
# a join, not a json.dumps of every object on every page.
encoded = {path: {} for path in COLLECTIONS}
history = []                                     # (rv, path, type, object)
rv = 1000
oldest = rv + 1                                  # watches from before this get 410
stats = {"lists": {}, "watches": {}, "gone": 0, "pages": 0}
snapshots = {}                                   # chunked lists: id -> (rv, items)
generation = 0                                   # bumped by /drop
paused = False                                   # /pause: watches get 503 until /resume
fault = ""                                       # /fault

if os.path.exists(args.state):
    saved = json.load(open(args.state))
    objects.update(saved["objects"])
    rv = saved["rv"]
    oldest = rv + 1
    for path, objs in objects.items():
        encoded[path] = {k: json.dumps(o).encode() for k, o in objs.items()}


def save():
    if args.no_save:
        return
    tmp = args.state + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"objects": objects, "rv": rv}, f)
    os.replace(tmp, args.state)


def key(obj):
    m = obj["metadata"]
    return (m.get("namespace", "") + "/" + m["name"]) if m.get("namespace") else m["name"]


def change(path, kind, obj):
    global rv
    rv += 1
    obj = json.loads(json.dumps(obj))
    obj["metadata"]["resourceVersion"] = str(rv)
    if kind == "DELETED":
        objects[path].pop(key(obj), None)
        encoded[path].pop(key(obj), None)
    else:
        objects[path][key(obj)] = obj
        encoded[path][key(obj)] = json.dumps(obj).encode()
    history.append((rv, path, kind, obj))
    save()
    lock.notify_all()


def selected(obj, query):
    labels = obj["metadata"].get("labels") or {}
    for term in (query.get("labelSelector", [""])[0]).split(","):
        if not term:
            continue
        if term.startswith("!"):
            if term[1:] in labels:
                return False
        elif "=" in term:
            k, v = term.split("=", 1)
            if labels.get(k) != v:
                return False
        elif term not in labels:
            return False
    for term in (query.get("fieldSelector", [""])[0]).split(","):
        if term.startswith("metadata.name="):
            if obj["metadata"]["name"] != term.split("=", 1)[1]:
                return False
    return True


def status(code, reason, message):
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


class API(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def send_json(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def authenticated(self):
        if args.token and self.headers.get("Authorization") == "Bearer " + args.token:
            return True
        try:
            if self.connection.getpeercert():
                return True
        except Exception:
            pass
        return False

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        query = urllib.parse.parse_qs(url.query)
        if not self.authenticated():
            return self.send_json(401, status(401, "Unauthorized", "Unauthorized"))
        if url.path not in COLLECTIONS:
            return self.send_json(404, status(404, "NotFound", "the server could not find the requested resource"))
        kind, api_version = COLLECTIONS[url.path]
        if fault == "ctrl" and query.get("watch", [""])[0] not in ("1", "true"):
            return self.send_json(500, status(500, "InternalError", "boom\r\nFAKE level=info forged line\x1b[31m red"))
        if query.get("watch", [""])[0] in ("1", "true"):
            if paused:
                return self.send_json(503, status(503, "ServiceUnavailable", "the server is paused by the test"))
            return self.watch(url.path, query)
        limit = int(query.get("limit", ["0"])[0] or 0)
        if args.max_page:
            limit = min(limit or args.max_page, args.max_page)
        token = query.get("continue", [""])[0]
        with lock:
            if token:
                # A later page of a chunked list: the same snapshot, from where the last ended.
                snap_id, offset = map(int, token.split(":"))
                if snap_id not in snapshots:
                    return self.send_json(410, status(410, "Expired", "the continue token has expired"))
                snap_rv, items = snapshots[snap_id]
            else:
                stats["lists"][url.path] = stats["lists"].get(url.path, 0) + 1
                snap_rv, offset = rv, 0
                items = [encoded[url.path][k] for k, o in sorted(objects[url.path].items()) if selected(o, query)]
                snap_id = len(snapshots)
                snapshots[snap_id] = (snap_rv, items)
            page = items[offset:offset + limit] if limit else items[offset:]
            stats["pages"] += 1
            meta = {"resourceVersion": str(snap_rv)}
            if fault == "endless":
                meta["continue"] = "%d:%d" % (snap_id, 0)
            elif limit and offset + limit < len(items):
                meta["continue"] = "%d:%d" % (snap_id, offset + limit)
                meta["remainingItemCount"] = len(items) - offset - limit
            head = {"kind": kind + "List", "apiVersion": api_version, "metadata": meta}
            data = json.dumps(head)[:-1].encode() + b', "items": [' + b", ".join(page) + b"]}"
        if args.list_delay and kind == "EndpointSlice":
            time.sleep(args.list_delay)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def chunk(self, obj):
        data = (json.dumps(obj) + "\n").encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def watch(self, path, query):
        since = int(query.get("resourceVersion", ["0"])[0] or 0)
        timeout = float(query.get("timeoutSeconds", ["300"])[0])
        bookmarks = query.get("allowWatchBookmarks", [""])[0] == "true"
        kind, api_version = COLLECTIONS[path]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        with lock:
            stats["watches"][path] = stats["watches"].get(path, 0) + 1
            my_generation = generation
            if fault == "gone" or (since + 1 < oldest and since != 0):
                stats["gone"] += 1
                self.chunk({"type": "ERROR", "object": status(410, "Expired", "too old resource version: %d (%d)" % (since, oldest - 1))})
                self.wfile.write(b"0\r\n\r\n")
                return
        end = time.time() + timeout
        last_bookmark = time.time()
        sent = since
        try:
            if fault == "longline":
                # One line that never ends, 64 KB every 10 ms, until the client gives up.
                data = b"x" * 65536
                while time.time() < end:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    time.sleep(0.01)
                return
            while time.time() < end:
                with lock:
                    lock.wait(timeout=0.2)
                    if generation != my_generation:
                        # Cut mid-stream: no final chunk, the connection just goes.
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    events = [(r, t, o) for (r, p, t, o) in history if p == path and r > sent]
                    current = rv
                for r, t, o in events:
                    sent = r
                    if t == "RAW":
                        self.chunk(o)
                        continue
                    if t != "DELETED" and not selected(o, query):
                        continue
                    obj = dict(o, kind=kind, apiVersion=api_version)
                    self.chunk({"type": t, "object": obj})
                if bookmarks and time.time() - last_bookmark > 1:
                    last_bookmark = time.time()
                    sent = max(sent, current)
                    self.chunk({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version,
                                                               "metadata": {"resourceVersion": str(sent)}}})
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            pass
        self.close_connection = True


class Control(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        with lock:
            data = json.dumps(stats).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        global oldest, generation, paused, fault, rv
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        with lock:
            if self.path == "/put":
                path = PATH_OF_KIND[body["kind"]]
                exists = key(body) in objects[path]
                body = {k: v for k, v in body.items() if k not in ("kind", "apiVersion")}
                change(path, "MODIFIED" if exists else "ADDED", body)
            elif self.path == "/delete":
                path = PATH_OF_KIND[body["kind"]]
                meta = {"name": body["name"]}
                if body.get("namespace"):
                    meta["namespace"] = body["namespace"]
                old = objects[path].get(key({"metadata": meta}))
                if old:
                    change(path, "DELETED", old)
            elif self.path == "/compact":
                history.clear()
                oldest = rv + 1
            elif self.path == "/fault":
                fault = body.get("mode", "")
            elif self.path == "/inject":
                rv += 1
                history.append((rv, body["path"], "RAW", {"type": body["type"], "object": body["object"]}))
                lock.notify_all()
            elif self.path == "/pause":
                paused = True
            elif self.path == "/resume":
                paused = False
            elif self.path == "/drop":
                generation += 1
                lock.notify_all()
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


api = ThreadingHTTPServer(("127.0.0.1", args.port), API)
api.daemon_threads = True
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(args.cert, args.key)
if args.client_ca:
    ctx.load_verify_locations(args.client_ca)
    ctx.verify_mode = ssl.CERT_OPTIONAL
api.socket = ctx.wrap_socket(api.socket, server_side=True)
control = ThreadingHTTPServer(("127.0.0.1", args.control_port), Control)
control.daemon_threads = True
threading.Thread(target=api.serve_forever, daemon=True).start()
threading.Thread(target=control.serve_forever, daemon=True).start()
print("ready", flush=True)
time.sleep(args.seconds)

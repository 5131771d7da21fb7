"""A callback receiver for scripts/image.sh: verifies each request's Standard Webhooks v1
signature (HMAC-SHA256 over "<webhook-id>.<webhook-timestamp>.<body>") with the whsec_ secret
given, answers 200 to a valid one and 401 otherwise, and appends JSON lines to the record
file: one when a request arrives, one once it is answered. A body with "slow": true is
answered after 3 s (a delivery in flight while the worker stops). Usage: image-receiver.py PORT_FILE RECORD_FILE SECRET (port 0: any free
one, written to PORT_FILE once listening)."""

import base64
import hashlib
import hmac
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port_file, record_file, secret = sys.argv[1], sys.argv[2], sys.argv[3]
key = base64.b64decode(secret.removeprefix("whsec_"))


def write(record):
    with open(record_file, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        msg_id = self.headers.get("webhook-id", "")
        ts = self.headers.get("webhook-timestamp", "")
        signed = f"{msg_id}.{ts}.".encode() + body
        expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        sigs = self.headers.get("webhook-signature", "").split()
        verified = any(
            s.startswith("v1,") and hmac.compare_digest(s[3:], expected) for s in sigs
        )
        record = {
            "path": self.path,
            "id": msg_id,
            "verified": verified,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body.decode("utf-8", "replace"),
        }
        write(dict(record, phase="arrived"))
        if b'"slow":true' in body:
            time.sleep(3)
        self.send_response(200 if verified else 401)
        self.send_header("Content-Length", "0")
        self.end_headers()
        self.wfile.flush()
        write(dict(record, phase="answered"))

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(port_file + ".tmp", "w", encoding="utf-8") as f:
    f.write(str(server.server_address[1]))
os.replace(port_file + ".tmp", port_file)
server.serve_forever()

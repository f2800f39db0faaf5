#!/usr/bin/env python3
"""A minimal OTLP/HTTP trace sink for bench/run.sh (scenario tracing): accepts
POST /v1/traces (protobuf bodies), answers 200 with an empty ExportTraceServiceResponse, and
keeps only counts (GET /stats -> {"exports": N, "bytes": N}). Usage: otlp-sink.py PORT"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
STATS = {"exports": 0, "bytes": 0}


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        n = int(self.headers.get("content-length", "0"))
        self.rfile.read(n)
        with LOCK:
            STATS["exports"] += 1
            STATS["bytes"] += n
        ok = self.path == "/v1/traces"
        self.send_response(200 if ok else 404)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def do_GET(self):
        with LOCK:
            body = json.dumps(STATS).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()

#!/usr/bin/env python3
"""Time from exec to ready for one proxy process, then stop it with SIGTERM.

    startup.py --url http://127.0.0.1:PORT/ready [--timeout 15] [--log FILE] -- CMD ARGS...

Starts CMD, polls URL (one GET per millisecond or so) until it answers 200, sends
SIGTERM, waits for the exit and prints one JSON object:
    {"ready_ms": 12.3, "exit_code": 0, "stop_ms": 4.5, "rss_kib": 9000}
or {"error": "...", ...} when the process exits early or never becomes ready.
Bounded: the whole run ends within --timeout + 5 s, and the child is always reaped.
Stdlib only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse


def probe(host: str, port: int, path: str) -> bool:
    conn = http.client.HTTPConnection(host, port, timeout=0.5)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def vm_rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--timeout", type=float, default=15.0)
    ap.add_argument("--log", default=os.devnull)
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("missing command after --")
    url = urllib.parse.urlsplit(args.url)
    host, port, path = url.hostname or "127.0.0.1", url.port or 80, url.path or "/"

    # Forward SIGTERM/SIGINT as an exception so the child is always stopped.
    def _stop(signum, _frame):
        raise KeyboardInterrupt(signum)

    signal.signal(signal.SIGTERM, _stop)
    result: dict = {}
    with open(args.log, "ab") as log:
        t0 = time.perf_counter()
        child = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        try:
            deadline = t0 + args.timeout
            while True:
                if child.poll() is not None:
                    result["error"] = f"exited with {child.returncode} before ready"
                    break
                if probe(host, port, path):
                    result["ready_ms"] = round((time.perf_counter() - t0) * 1000, 2)
                    result["rss_kib"] = vm_rss_kib(child.pid)
                    break
                if time.perf_counter() > deadline:
                    result["error"] = f"not ready after {args.timeout}s"
                    break
                time.sleep(0.001)
        finally:
            if child.poll() is None:
                t1 = time.perf_counter()
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(timeout=5)
                    result["stop_ms"] = round((time.perf_counter() - t1) * 1000, 2)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
                    result["error"] = result.get("error") or "did not exit within 5s of SIGTERM"
            result["exit_code"] = child.returncode
    print(json.dumps(result))
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main())

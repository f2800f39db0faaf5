#!/usr/bin/env python3
"""Memory with many idle connections open through a proxy (or a chain of proxies).

    idle-conns.py --port PORT --count 1000 --pid A=1234 --pid B=5678 [--payload 16]
                  [--parallel 50] [--settle 2] [--timeout 60]

Reads VmRSS of every --pid, then opens COUNT connections to 127.0.0.1:PORT (at most
PARALLEL connects in flight). Each connection sends PAYLOAD bytes and reads the echo back,
so the whole path (client -> proxy A -> proxy B -> echo upstream) is set up, and then stays
open and idle. Once all are open it waits SETTLE seconds, reads VmRSS (and the open fd
count) of every pid again, closes every connection, waits SETTLE seconds and reads them a
last time. Prints one JSON object:

    {"count":1000,"opened":1000,"failed":0,"errors":{},"open_s":0.41,
     "before":{"A":{"rss_kib":..,"fds":..},..},"held":{..},"after_close":{..}}

Raises its own RLIMIT_NOFILE soft limit to the hard limit. Bounded: the whole run ends
within --timeout seconds (unfinished connects count as failed). Stdlib only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time


def proc_reading(pid: int) -> dict:
    out: dict = {"rss_kib": None, "fds": None}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    out["rss_kib"] = int(line.split()[1])
    except OSError:
        pass
    try:
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        pass
    return out


def readings(pids: dict[str, int]) -> dict:
    return {name: proc_reading(pid) for name, pid in pids.items()}


async def open_one(port: int, payload: bytes, sem: asyncio.Semaphore, conns: list,
                   errors: dict) -> None:
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), timeout=10)
        except Exception as e:  # noqa: BLE001 - every failure is counted by kind
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
            return
        try:
            writer.write(payload)
            await writer.drain()
            echo = await asyncio.wait_for(reader.readexactly(len(payload)), timeout=10)
            if echo != payload:
                raise ValueError("echo mismatch")
        except Exception as e:  # noqa: BLE001
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
            writer.close()
            return
        conns.append(writer)


async def run(args: argparse.Namespace, pids: dict[str, int]) -> dict:
    payload = b"x" * args.payload
    before = readings(pids)
    sem = asyncio.Semaphore(args.parallel)
    conns: list = []
    errors: dict = {}
    t0 = time.monotonic()
    tasks = [asyncio.create_task(open_one(args.port, payload, sem, conns, errors))
             for _ in range(args.count)]
    done, pending = await asyncio.wait(tasks, timeout=max(1.0, args.timeout - 3 * args.settle))
    for t in pending:
        t.cancel()
    if pending:
        errors["unfinished"] = len(pending)
    open_s = time.monotonic() - t0
    await asyncio.sleep(args.settle)
    held = readings(pids)
    for w in conns:
        w.close()
    for w in conns:
        try:
            await asyncio.wait_for(w.wait_closed(), timeout=1)
        except Exception:  # noqa: BLE001 - the peer may have gone already
            pass
    await asyncio.sleep(args.settle)
    after = readings(pids)
    return {
        "count": args.count, "opened": len(conns), "failed": args.count - len(conns),
        "errors": errors, "payload": args.payload, "open_s": round(open_s, 3),
        "settle_s": args.settle, "before": before, "held": held, "after_close": after,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--payload", type=int, default=16)
    ap.add_argument("--parallel", type=int, default=50)
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--pid", action="append", default=[], metavar="NAME=PID")
    args = ap.parse_args()
    pids = {}
    for item in args.pid:
        name, _, pid = item.partition("=")
        pids[name] = int(pid)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < args.count + 64:
        print(json.dumps({"error": f"fd limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]} "
                                   f"is too low for {args.count} connections"}))
        sys.exit(0)
    print(json.dumps(asyncio.run(run(args, pids))))


if __name__ == "__main__":
    main()

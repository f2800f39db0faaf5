#!/usr/bin/env python3
"""CPU used on this machine by processes that are not part of the benchmark.

    cpu-watch.py ROOT_PID OUT_FILE [INTERVAL_S]

Every INTERVAL_S (0.25) it reads /proc/*/stat and adds up the CPU time (utime+stime) that
processes outside ROOT_PID's process tree used since the previous sample (kernel threads
are left out: loopback traffic is partly processed in ksoftirqd). Processes that start
after the watcher are counted from their start; processes that end between two samples
lose at most one interval. After every sample it replaces OUT_FILE with
    {"foreign_s": 12.3, "samples": 400, "by_comm": {"rustc": 11.0, "cargo": 1.3}}
so bench/run.sh can read the counter before and after each measurement. Exits when
ROOT_PID is gone or on SIGTERM. Stdlib only.
"""

from __future__ import annotations

import json
import os
import sys
import time


def read_all() -> dict[tuple[int, int], tuple[int, int, str]]:
    """(pid, starttime) -> (ppid, ticks, comm)"""
    procs = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                raw = f.read().decode("ascii", "replace")
        except OSError:
            continue
        close = raw.rfind(")")
        comm = raw[raw.find("(") + 1:close]
        fields = raw[close + 2:].split()
        try:
            procs[(int(name), int(fields[19]))] = (int(fields[1]), int(fields[11]) + int(fields[12]), comm)
        except (IndexError, ValueError):
            continue
    return procs


def main() -> None:
    root, out = int(sys.argv[1]), sys.argv[2]
    interval = float(sys.argv[3]) if len(sys.argv) > 3 else 0.25
    hz = os.sysconf("SC_CLK_TCK")
    with open("/proc/self/stat", encoding="ascii") as f:
        my_start = int(f.read().rsplit(")", 1)[1].split()[19])
    last: dict[tuple[int, int], int] = {}
    total = 0
    by_comm: dict[str, int] = {}
    samples = 0
    while os.path.exists(f"/proc/{root}"):
        procs = read_all()
        ours = {root}
        children: dict[int, list[int]] = {}
        for (pid, _), (ppid, _, _) in procs.items():
            children.setdefault(ppid, []).append(pid)
        stack = [root]
        while stack:
            for c in children.get(stack.pop(), []):
                if c not in ours:
                    ours.add(c)
                    stack.append(c)
        seen = {}
        for key, (ppid, ticks, comm) in procs.items():
            pid, start = key
            seen[key] = ticks
            if pid in ours or pid == 2 or ppid == 2:
                continue
            if key in last:
                delta = ticks - last[key]
            elif start >= my_start and samples > 0:
                delta = ticks
            else:
                delta = 0  # running before the watcher: baseline
            if delta > 0:
                total += delta
                by_comm[comm] = by_comm.get(comm, 0) + delta
        last = seen
        samples += 1
        tmp = out + ".tmp"
        with open(tmp, "w", encoding="ascii") as f:
            json.dump({"foreign_s": total / hz, "samples": samples,
                       "by_comm": {k: round(v / hz, 2) for k, v in
                                   sorted(by_comm.items(), key=lambda kv: -kv[1])[:10]}}, f)
        os.replace(tmp, out)
        time.sleep(interval)


if __name__ == "__main__":
    main()

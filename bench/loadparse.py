#!/usr/bin/env python3
"""Parse the output of an HTTP load client into one JSON object on stdout (stdlib only).

    loadparse.py wrk FILE      # wrk --latency output
    loadparse.py h2load FILE   # h2load output
    loadparse.py oha FILE      # oha JSON output
    loadparse.py control FILE  # examples/control_load output

Used by bench/run.sh (scenarios http and control). On a parse failure prints {"error": ...}.
"""

import json
import re
import sys

UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def ms(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"bad duration {text!r}")
    return float(m.group(1)) * UNITS_MS[m.group(2)]


def wrk(text: str) -> dict:
    out: dict = {}
    m = re.search(r"Requests/sec:\s+([0-9.]+)", text)
    if not m:
        return {"error": "no Requests/sec line: " + text.strip()[-300:]}
    out["rps"] = float(m.group(1))
    m = re.search(r"(\d+) requests in ([0-9.]+\w+)", text)
    if m:
        out["requests"] = int(m.group(1))
        out["duration_s"] = ms(m.group(2)) / 1000
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+([0-9.]+\w+)", text, re.M)
        if m:
            out[f"p{pct}_ms"] = ms(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    out["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["socket_errors"] = sum(int(g) for g in m.groups()) if m else 0
    return out


def h2load(text: str) -> dict:
    m = re.search(r"finished in ([0-9.]+\w+), ([0-9.]+) req/s", text)
    if not m:
        return {"error": "no 'finished in' line: " + text.strip()[-300:]}
    out: dict = {"duration_s": ms(m.group(1)) / 1000, "rps": float(m.group(2))}
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", text)
    if m:
        total, started, done, ok, failed, errored, timeout = map(int, m.groups())
        out.update(requests=done, succeeded=ok, failed=failed, errored=errored, timeout=timeout)
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if m:
        out["status_2xx"] = int(m.group(1))
        out["non2xx"] = sum(int(g) for g in m.groups()[1:])
    m = re.search(r"time for request:\s+([0-9.]+\w+)\s+([0-9.]+\w+)\s+([0-9.]+\w+)", text)
    if m:
        out["req_mean_ms"] = ms(m.group(3))
    return out


def oha(text: str) -> dict:
    try:
        d = json.loads(text[text.index("{"):])
    except (ValueError, json.JSONDecodeError) as e:
        return {"error": f"no JSON: {e}: " + text.strip()[-300:]}
    s = d.get("summary", {})
    lp = d.get("latencyPercentiles", {})
    codes = d.get("statusCodeDistribution", {})
    errors = d.get("errorDistribution", {})
    return {
        "rps": s.get("requestsPerSec"),
        "p50_ms": None if lp.get("p50") is None else lp["p50"] * 1000,
        "p99_ms": None if lp.get("p99") is None else lp["p99"] * 1000,
        "p999_ms": None if lp.get("p99.9") is None else lp["p99.9"] * 1000,
        "success_rate": s.get("successRate"),
        "requests": sum(codes.values()),
        "non2xx": sum(v for k, v in codes.items() if not k.startswith("2")),
        # oha -z counts the requests still in flight when the duration ends as errors
        # ("aborted due to deadline"); they are not failures of the server or proxy.
        "errors": sum(v for k, v in errors.items() if k != "aborted due to deadline"),
        "aborted_at_deadline": errors.get("aborted due to deadline", 0),
    }


def control(text: str) -> dict:
    out: dict = {}
    m = re.search(r"clients=(\d+) connected_in_ms=([0-9.]+)", text)
    if m:
        out["clients"], out["connected_in_ms"] = int(m.group(1)), float(m.group(2))
    m = re.search(r"push_latency_ms (.*)", text)
    if not m:
        return dict(out, error="no push_latency_ms line: " + text.strip()[-300:])
    for k, v in re.findall(r"(\w+)=([0-9.]+)", m.group(1)):
        out[k + "_ms"] = float(v)
    return out


def main() -> None:
    kind, path = sys.argv[1], sys.argv[2]
    try:
        text = open(path, errors="replace").read()
        res = {"wrk": wrk, "h2load": h2load, "oha": oha, "control": control}[kind](text)
    except Exception as e:  # noqa: BLE001 - report, never crash the harness
        res = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(res))


if __name__ == "__main__":
    main()

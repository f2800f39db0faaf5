#!/usr/bin/env python3
"""Build bench/RESULTS.md from the latest run of each scenario under bench/out/.

    report.py --out bench/out --results bench/RESULTS.md

bench/run.sh links bench/out/latest-<scenario> to the run directory that last ran that
scenario; each holds meta.json (machine, versions, settings) and <scenario>.jsonl (one
JSON record per target and per run). Stdlib only.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

# Which Envoy row each target is compared with: the one with the same worker count.
ENVOY_REF = {"spoke-w2": "envoy-c2", "envoy-c2": "envoy-c2"}
SCENARIO_ORDER = ["tcp", "startup"]


def load_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def ratio(value: float | None, ref: float | None) -> str:
    if value is None or not ref:
        return "n/a"
    return f"{value / ref:.2f}×"


def mib(kib: float | None) -> float | None:
    return None if kib is None else kib / 1024


# === tcp ===


def tcp_rows(records: list[dict]) -> tuple[list[str], dict[str, dict]]:
    order: list[str] = []
    rows: dict[str, dict] = {}
    for r in records:
        if r.get("kind") != "target":
            continue
        name = r["target"]
        order.append(name)
        rows[name] = dict(r, iperf=[], connrate=[])
    for r in records:
        if r.get("kind") in ("iperf", "connrate") and r["target"] in rows:
            rows[r["target"]][r["kind"]].append(r)
    for row in rows.values():
        row["gbps"] = median([(r["bps"] or 0) / 1e9 for r in row["iperf"] if r.get("bps")])
        row["cpu_tp"] = median(
            [100 * r["proxy_cpu_s"] / r["wall_s"] for r in row["iperf"]
             if r.get("proxy_cpu_s") is not None and r.get("bps") and r.get("wall_s")]
        )
        ok = [r for r in row["connrate"] if isinstance(r.get("result"), dict)]
        row["cps"] = median([r["result"]["rate"] for r in ok])
        row["cpu_cr"] = median(
            [100 * r["proxy_cpu_s"] / r["result"]["seconds"] for r in ok
             if r.get("proxy_cpu_s") is not None and r["result"].get("seconds")]
        )
        row["conn_errors"] = sum(sum(r["result"]["errors"].values()) for r in ok)
        row["p99"] = median([r["result"]["p99_us"] for r in ok])
        row["idle"] = mib(row.get("idle_rss_kib"))
        row["loaded"] = mib(row.get("hwm_after_throughput_kib"))
        row["peak"] = mib(row.get("hwm_end_kib"))
    return order, rows


def tcp_section(records: list[dict], meta: dict) -> list[str]:
    order, rows = tcp_rows(records)
    up = next((r for r in records if r.get("kind") == "upstreams"), {})
    out = [
        "## TCP proxying (`bench/run.sh tcp`)",
        "",
        f"Run {meta.get('date', '?')}. Each number is the median of {meta.get('runs', '?')} runs: "
        f"iperf3 {meta.get('seconds', '?')} s single stream; short connections for "
        f"{meta.get('conn_seconds', '?')} s with {meta.get('conn_workers', '?')} client threads, "
        f"{meta.get('payload', '?')} B echoed per connection. Loaded RSS is VmHWM (peak) after "
        "the throughput runs; peak RSS is VmHWM at the end, after the connection runs too. "
        "CPU is the proxy's utime+stime over the run, in % of one core. Ratios compare with the "
        "Envoy row of the same worker count (higher is better for throughput and conns/s, "
        "lower for RSS).",
        "",
        "| target | threads | throughput Gbit/s | conns/s | idle RSS MiB | loaded RSS MiB | peak RSS MiB "
        "| CPU % (iperf) | CPU % (conns) | throughput vs Envoy | conns/s vs Envoy | loaded RSS vs Envoy |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    skipped = []
    for name in order:
        row = rows[name]
        if row.get("skipped"):
            skipped.append(f"- `{row['label']}` skipped: {row['skipped']}")
            out.append(f"| {row['label']} | — | skipped | skipped | — | — | — | — | — | — | — | — |")
            continue
        ref = rows.get(ENVOY_REF.get(name, "envoy"), {})
        direct = name == "direct"
        out.append(
            "| " + " | ".join([
                row["label"],
                "—" if row.get("threads") is None else str(row["threads"]),
                fmt(row["gbps"], 2),
                fmt(row["cps"], 0),
                "—" if direct else fmt(row["idle"]),
                "—" if direct else fmt(row["loaded"]),
                "—" if direct else fmt(row["peak"]),
                "—" if direct else fmt(row["cpu_tp"], 0),
                "—" if direct else fmt(row["cpu_cr"], 0),
                ratio(row["gbps"], ref.get("gbps")),
                ratio(row["cps"], ref.get("cps")),
                "—" if direct else ratio(row["loaded"], ref.get("loaded")),
            ]) + " |"
        )
    out.append("")
    out.append(
        "On a 2-core machine the direct conns/s figure is bound by the kernel's loopback TCP "
        "set-up and tear-down (the C client spends almost all its time in the kernel, and more "
        "client threads do not raise it), not by the client; a proxy adds a second connection "
        "and its own CPU to every short connection on the same two cores."
    )
    out.append("")
    out.extend(skipped)
    errors = [f"`{rows[n]['label']}`: {rows[n]['conn_errors']}" for n in order
              if rows[n].get("conn_errors")]
    if errors:
        out.append("- connection errors during the conns/s runs: " + ", ".join(errors))
    # Spoke promises exit 0 on SIGTERM; HAProxy (-db) dies by the signal (status 143) by design.
    exits = [f"`{rows[n]['label']}` exited {rows[n]['exit_status']}" for n in order
             if n.startswith("spoke") and rows[n].get("exit_status") not in (None, 0)]
    if exits:
        out.append("- spoke exit status on SIGTERM other than 0: " + ", ".join(exits))
    if skipped or errors or exits:
        out.append("")

    out += [
        "### Per-run numbers",
        "",
        "| target | run | Gbit/s | proxy CPU s | RSS after MiB | conns/s | conn errors | p50 µs | p99 µs |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name in order:
        row = rows[name]
        if row.get("skipped"):
            continue
        n = max(len(row["iperf"]), len(row["connrate"]))
        for i in range(n):
            ip = row["iperf"][i] if i < len(row["iperf"]) else {}
            cr = row["connrate"][i] if i < len(row["connrate"]) else {}
            res = cr.get("result") if isinstance(cr.get("result"), dict) else {}
            gbps = fmt(ip["bps"] / 1e9, 2) if ip.get("bps") else f"failed: {ip.get('error', '?')}"
            out.append("| " + " | ".join([
                row["label"], str(i + 1), gbps,
                fmt(ip.get("proxy_cpu_s"), 2),
                fmt(mib(ip.get("rss_kib"))),
                fmt(res.get("rate"), 0) if res else "failed",
                str(sum(res["errors"].values())) if res else "—",
                str(res.get("p50_us", "—")), str(res.get("p99_us", "—")),
            ]) + " |")
    out += ["", "### Commands", "", "```sh"]
    if up:
        out += [
            f"{up['iperf_server']}            # throughput upstream",
            f"{up['echo_server']}     # conns/s upstream (bench/echo-server.c)",
        ]
    for name in order:
        row = rows[name]
        if row.get("cmd"):
            out.append(f"{row['cmd']}")
    if up:
        out += [
            f"{up['iperf_client']}     # PORT: {up.get('iperf_port', '?')} direct, "
            "else the proxy's iperf listener",
            f"{up['connrate_client']}     # bench/connrate.c; PORT: {up.get('echo_port', '?')} "
            "direct, else the proxy's echo listener",
        ]
    out += [
        "```",
        "",
        "Proxy configs are rendered from `bench/spoke-tcp.yaml.tmpl`, `bench/envoy-tcp.yaml.tmpl` "
        "and `bench/haproxy-tcp.cfg.tmpl`; the rendered files and every raw iperf3/connrate "
        f"output are in `bench/{meta.get('run_dir', 'out/runs/...')}/` (not committed). Ports:",
        "",
        "| target | iperf listener | echo listener |",
        "|---|--:|--:|",
    ]
    for name in order:
        row = rows[name]
        if not row.get("skipped"):
            out.append(f"| {row['label']} | {row.get('iperf_port')} | {row.get('echo_port')} |")
    out.append("")
    return out


# === startup ===


def startup_section(records: list[dict], meta: dict) -> list[str]:
    out = [
        "## Start-up (`bench/run.sh startup`)",
        "",
        f"Run {meta.get('date', '?')}. Time from exec to the first 200 from the readiness URL "
        "(polled about every millisecond by `bench/startup.py`), then SIGTERM; median of "
        f"{meta.get('runs', '?')} runs.",
        "",
        "| proxy | ready ms (median) | ready ms (runs) | RSS at ready MiB | exit status on SIGTERM | readiness URL |",
        "|---|--:|---|--:|---|---|",
    ]
    targets = [r for r in records if r.get("kind") == "target"]
    notes = []
    for t in targets:
        if t.get("skipped"):
            out.append(f"| {t['label']} | skipped | — | — | — | — |")
            notes.append(f"- `{t['label']}` skipped: {t['skipped']}")
            continue
        runs = [r["result"] for r in records if r.get("kind") == "run" and r["target"] == t["target"]]
        ready = [r["ready_ms"] for r in runs if "ready_ms" in r]
        errs = sorted({r["error"] for r in runs if r.get("error")})
        notes += [f"- `{t['label']}`: {e}" for e in errs]
        exits = sorted({exit_text(r.get("exit_code")) for r in runs})
        out.append("| " + " | ".join([
            t["label"], fmt(median(ready), 1), ", ".join(fmt(v, 1) for v in ready) or "—",
            fmt(mib(median([r.get("rss_kib") for r in runs if r.get("rss_kib")]))),
            ", ".join(exits) or "—", f"`{t['ready_url']}`",
        ]) + " |")
    out.append("")
    if notes:
        out += notes + [""]
    out += ["```sh"] + [t["cmd"] for t in targets if t.get("cmd")] + ["```", ""]
    return out


def exit_text(code: int | None) -> str:
    if code is None:
        return "?"
    return f"killed by signal {-code}" if code < 0 else str(code)


# === page ===


def header(meta: dict) -> list[str]:
    return [
        "# Spoke benchmark results",
        "",
        "Generated by `bench/run.sh` (see the script's header for its settings); do not edit by "
        "hand. Everything runs on 127.0.0.1 on one machine: load client, upstream server and proxy "
        "share its cores, so the numbers compare proxies with each other on this machine and are "
        "not absolute capacity figures. Envoy runs with `--concurrency 1` and HAProxy with "
        "`nbthread 1` (one worker each, fair on 2 cores); Spoke's 1-worker row sets "
        "`TOKIO_WORKER_THREADS=1`. The 2-worker rows (Envoy `--concurrency 2`, Spoke with 2 "
        "workers) show what a second worker buys when it competes with the load generator.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        f"| date | {meta.get('date', '?')} |",
        f"| CPU | {meta.get('cpu_model', '?')} |",
        f"| nproc | {meta.get('nproc', '?')} |",
        f"| memory | {meta.get('mem_total', '?')} |",
        f"| kernel | {meta.get('kernel', '?')} |",
        f"| OS | {meta.get('os', '?')} |",
        "",
        "## Versions",
        "",
        "| | |",
        "|---|---|",
        f"| spoke | git {meta.get('spoke_rev', '?')}"
        + (f", `{meta['spoke_version']}`" if meta.get("spoke_version") else "")
        + f" (`{meta.get('spoke_bin', '?')}`) |",
        f"| envoy | `{meta.get('envoy_version', '?')}` (PyPI `{meta.get('envoy_spec', '?')}`) |",
        f"| haproxy | {meta.get('haproxy_version', '?')} |",
        f"| iperf3 | {meta.get('iperf3_version', '?')} |",
        "",
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--results", type=Path, required=True)
    args = ap.parse_args()

    sections: list[str] = []
    newest: dict = {}
    for scenario in SCENARIO_ORDER:
        run_dir = args.out / f"latest-{scenario}"
        if not run_dir.exists():
            continue
        meta = json.loads((run_dir / "meta.json").read_text())
        if meta.get("date", "") >= newest.get("date", ""):
            newest = meta
        records = load_jsonl(run_dir / f"{scenario}.jsonl")
        if scenario == "tcp":
            sections += tcp_section(records, meta)
        elif scenario == "startup":
            sections += startup_section(records, meta)
    args.results.write_text("\n".join(header(newest) + sections).rstrip() + "\n")


if __name__ == "__main__":
    main()

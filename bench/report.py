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
import re
import statistics
from pathlib import Path

# Which Envoy row each target is compared with: the one with the same worker count.
ENVOY_REF = {"spoke-w2": "envoy-c2", "envoy-c2": "envoy-c2"}
SCENARIO_ORDER = ["tcp", "mtls", "http", "onehop", "authz", "routes", "defaults", "tracing", "lb", "control", "scale", "startup"]


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


def foreign_notes(records: list[dict], meta: dict) -> list[str]:
    """How quiet the machine was: CPU used by processes outside the benchmark."""
    runs = [r for r in records if r.get("kind") in ("iperf", "connrate", "idle")
            and r.get("other_cpu_s") is not None]
    if not runs:
        return []
    total = sum(r["other_cpu_s"] for r in runs)
    busy = [r for r in runs if r["other_cpu_s"] >= 0.5]
    watch = next((r for r in records if r.get("kind") == "foreign"), {})
    by_comm = (watch.get("watcher") or {}).get("by_comm") or {}
    top = ", ".join(f"`{k}` {v:.1f} s" for k, v in list(by_comm.items())[:5])
    line = (f"Machine load: load average {meta.get('loadavg_start', '?')} when the run started. "
            f"Processes outside the benchmark (counted by `bench/cpu-watch.py`, kernel threads "
            f"left out) used {total:.1f} CPU s during the measurements (`other CPU s` column)")
    if busy:
        line += (f"; {len(busy)} of {len(runs)} measurements had ≥ 0.5 s of it and may be low"
                 + (f" — over the whole run: {top}" if top else "") + ".")
    else:
        line += "; none had ≥ 0.5 s."
    return [line, ""]


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
        # iperf3's own client + server CPU, per Gbit/s carried: what the proxy's read and
        # write sizes cost the endpoints, fair across rows of different throughput.
        eps = [r for r in row["iperf"] if isinstance(r.get("endpoint_cpu"), dict) and r.get("bps")]
        row["ep_cpu"] = median([r["endpoint_cpu"]["client"] + r["endpoint_cpu"]["server"] for r in eps])
        row["ep_cpu_gbps"] = median(
            [(r["endpoint_cpu"]["client"] + r["endpoint_cpu"]["server"]) / (r["bps"] / 1e9) for r in eps])
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
        f"{meta.get('payload', '?')} B echoed per connection. "
        + ("All targets run at once, each idle while another is measured, and the runs "
           "alternate between them (run 1 of every target, then run 2, ...). "
           if up.get("alternating") else
           "One target after another, each started, measured and stopped in turn. ")
        + "Loaded RSS is VmHWM (peak) after "
        "the throughput runs; peak RSS is VmHWM at the end, after the connection runs too. "
        "CPU is the proxy's utime+stime over the run, in % of one core. Ratios compare with the "
        "Envoy row of the same worker count (higher is better for throughput and conns/s, "
        "lower for RSS).",
        "",
        "| target | threads | throughput Gbit/s | conns/s | idle RSS MiB | loaded RSS MiB | peak RSS MiB "
        "| CPU % (iperf) | CPU % (conns) | iperf3 client+server CPU % | same per Gbit/s "
        "| throughput vs Envoy | conns/s vs Envoy | loaded RSS vs Envoy |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    skipped = []
    for name in order:
        row = rows[name]
        if row.get("skipped"):
            skipped.append(f"- `{row['label']}` skipped: {row['skipped']}")
            out.append(f"| {row['label']} | — | skipped | skipped |" + " — |" * 10)
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
                fmt(row["ep_cpu"], 0),
                fmt(row["ep_cpu_gbps"], 1),
                ratio(row["gbps"], ref.get("gbps")),
                ratio(row["cps"], ref.get("cps")),
                "—" if direct else ratio(row["loaded"], ref.get("loaded")),
            ]) + " |"
        )
    out.append("")
    sp, en = rows.get("spoke", {}), rows.get("envoy", {})
    if sp.get("gbps") and en.get("gbps"):
        tp = sp["gbps"] / en["gbps"]
        out += [
            "Targets (performance issue, goal 4): `spoke` (1 worker) vs `envoy` (--concurrency 1).",
            "",
            "| goal | target | spoke | envoy | ratio | |",
            "|---|---|--:|--:|--:|---|",
            f"| iperf3 throughput, Gbit/s | ≥ 1.2× Envoy | {fmt(sp['gbps'], 2)} | {fmt(en['gbps'], 2)} "
            f"| {tp:.2f}× | {'met' if tp >= 1.2 else '**not met**'} |",
        ]
        if sp.get("ep_cpu_gbps") and en.get("ep_cpu_gbps"):
            r = sp["ep_cpu_gbps"] / en["ep_cpu_gbps"]
            out.append(
                f"| iperf3's own CPU (client+server) per Gbit/s | ≤ 1.0× Envoy | {fmt(sp['ep_cpu_gbps'], 1)} "
                f"| {fmt(en['ep_cpu_gbps'], 1)} | {r:.2f}× | {'met' if r <= 1.0 else '**not met**'} |")
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
        "| target | run | Gbit/s | proxy CPU s | RSS after MiB | conns/s | conn errors | p50 µs | p99 µs "
        "| other CPU s (iperf / conns) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
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
                f"{fmt(ip.get('other_cpu_s'), 2)} / {fmt(cr.get('other_cpu_s'), 2)}",
            ]) + " |")
    out.append("")
    out += foreign_notes(records, meta)
    out += ["### Commands", "", "```sh"]
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


# === mtls ===

# What each proxy checks of its peer on the A -> B hop (from the configs in bench/).
PEER_CHECKS = {
    "spoke": "A: chain + B's SPIFFE ID; B: chain + client's SPIFFE ID in `allow`",
    "envoy": "A: chain + URI SAN exact (backend); B: client cert required, chain + URI SAN exact (web)",
    "haproxy": "A: chain only (no URI SAN check); B: client cert required, chain only (no URI SAN check)",
}


def kib_median(values: list) -> float | None:
    return median([v for v in values if v is not None])


def mtls_rows(records: list[dict]) -> tuple[list[str], dict[str, dict]]:
    order: list[str] = []
    rows: dict[str, dict] = {}
    for r in records:
        if r.get("kind") == "target":
            order.append(r["target"])
            rows[r["target"]] = dict(r, iperf=[], connrate=[], idle=[])
    for r in records:
        if r.get("kind") in ("iperf", "connrate", "idle") and r["target"] in rows:
            rows[r["target"]][r["kind"]].append(r)
    for row in rows.values():
        ok_ip = [r for r in row["iperf"] if r.get("bps")]
        row["gbps"] = median([r["bps"] / 1e9 for r in ok_ip])
        row["cpu_tp"] = median([r["proxy_cpu_s"] for r in ok_ip if r.get("proxy_cpu_s") is not None])
        row["cpu_tp_pct"] = median([100 * r["proxy_cpu_s"] / r["wall_s"] for r in ok_ip
                                    if r.get("proxy_cpu_s") is not None and r.get("wall_s")])
        each = [r["proxy_cpu_each_s"] for r in ok_ip if isinstance(r.get("proxy_cpu_each_s"), list)]
        row["cpu_tp_a"] = median([e[0] for e in each if len(e) == 2])
        row["cpu_tp_b"] = median([e[1] for e in each if len(e) == 2])
        # CPU seconds per GB moved: comparable across rows with different throughput
        row["cpu_per_gb"] = median([r["proxy_cpu_s"] / (r["bps"] * r["wall_s"] / 8e9) for r in ok_ip
                                    if r.get("proxy_cpu_s") is not None and r.get("wall_s")])
        # iperf3's own client + server CPU, per Gbit/s carried: what the proxy's read and
        # write sizes cost the endpoints, fair across rows of different throughput.
        eps = [r for r in row["iperf"] if isinstance(r.get("endpoint_cpu"), dict) and r.get("bps")]
        row["ep_cpu"] = median([r["endpoint_cpu"]["client"] + r["endpoint_cpu"]["server"] for r in eps])
        row["ep_cpu_gbps"] = median(
            [(r["endpoint_cpu"]["client"] + r["endpoint_cpu"]["server"]) / (r["bps"] / 1e9) for r in eps])
        ok = [r for r in row["connrate"] if isinstance(r.get("result"), dict)]
        row["cps"] = median([r["result"]["rate"] for r in ok])
        row["cpu_cr_pct"] = median([100 * r["proxy_cpu_s"] / r["result"]["seconds"] for r in ok
                                    if r.get("proxy_cpu_s") is not None and r["result"].get("seconds")])
        row["cpu_per_conn_us"] = median([1e6 * r["proxy_cpu_s"] / r["result"]["ok"] for r in ok
                                         if r.get("proxy_cpu_s") is not None and r["result"].get("ok")])
        row["conn_errors"] = sum(sum(r["result"]["errors"].values()) for r in ok)
        idle = [r["result"] for r in row["idle"]
                if isinstance(r.get("result"), dict) and "held" in r["result"]]
        row["idle_runs"] = idle
        full = [d for d in idle if d.get("failed") == 0]

        def held(d: dict, who: str) -> float | None:
            return d["held"][who]["rss_kib"]

        row["held_a"] = mib(kib_median([held(d, "A") for d in full]))
        row["held_b"] = mib(kib_median([held(d, "B") for d in full]))
        sums = [held(d, "A") + held(d, "B") for d in full
                if held(d, "A") is not None and held(d, "B") is not None]
        row["held"] = mib(kib_median(sums))
        a, b = row.get("idle_rss_a_kib"), row.get("idle_rss_b_kib")
        held_kib = kib_median(sums)
        # Growth over the freshly started pair, per connection. (Growth within a run is not
        # used: after the first run the allocators keep the freed memory, so later runs start
        # high and grow little.)
        row["per_conn_kib"] = None
        if held_kib is not None and a is not None and b is not None and full:
            row["per_conn_kib"] = (held_kib - a - b) / full[0]["count"]
        row["idle_failed"] = sum(d.get("failed", 0) for d in idle) + (len(row["idle"]) - len(idle))
        row["idle_a"], row["idle_b"] = mib(a), mib(b)
        row["idle_sum"] = mib(a + b) if a is not None and b is not None else None
    return order, rows


def mtls_ref(name: str, rows: dict) -> dict:
    return rows.get(ENVOY_REF.get(name, "envoy"), {})


def mtls_section(records: list[dict], meta: dict) -> list[str]:
    order, rows = mtls_rows(records)
    up = next((r for r in records if r.get("kind") == "upstreams"), {})
    n_idle = up.get("idle_conns", "?")
    out = [
        "## Two-hop mutual TLS (`bench/run.sh mtls`)",
        "",
        "client → proxy A (plaintext listener, identity `spiffe://cluster.local/ns/default/sa/web`) "
        "→ TLS 1.3 with client certificates → proxy B (identity `…/sa/backend`, requires the "
        "client's certificate) → upstream (iperf3 server, or `bench/echo-server.c`). "
        "Certificates are ECDSA P-256 from `spoke ca` (only SAN: the SPIFFE URI), made fresh in "
        "`bench/out/certs/` for each run. Every row runs both A and B as the same proxy with the "
        "same worker count, on the same 2 cores as the clients and upstreams.",
        "",
        f"Run {meta.get('date', '?')}. Each number is the median of {meta.get('runs', '?')} runs: "
        f"iperf3 {meta.get('seconds', '?')} s single stream; new connections for "
        f"{meta.get('conn_seconds', '?')} s with {meta.get('conn_workers', '?')} client threads, "
        f"{meta.get('payload', '?')} B echoed per connection (each one is a new A→B TLS "
        f"connection); {n_idle} idle connections opened through A and B (each echoes 16 B first, "
        "so the B→upstream leg exists too), held 2 s, then VmRSS of A and of B is read. "
        "Idle RSS is A+B after start-up and 2 s of quiet, before any traffic. CPU is utime+stime "
        "of A plus B. Ratios compare with the Envoy row of the same worker count (`envoy A+B "
        "(--concurrency 1 each)` for the 1-worker rows); higher is better for throughput and "
        "conns/s, lower for RSS. KiB per idle conn = (RSS A+B with the idle connections − "
        "idle RSS A+B) / connections.",
        "",
        f"| target | threads A/B | throughput Gbit/s | mTLS conns/s | idle RSS A+B MiB "
        f"| RSS A+B with {n_idle} idle conns MiB | (A / B) MiB | KiB per idle conn (A+B) "
        "| CPU s A+B in iperf (A / B) | CPU s per GB | CPU µs per conn | throughput vs Envoy "
        "| conns/s vs Envoy | idle-conn RSS vs Envoy |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    notes = []
    for name in order:
        row = rows[name]
        if row.get("skipped"):
            notes.append(f"- `{row['label']}` skipped: {row['skipped']}")
            out.append(f"| {row['label']} | — | skipped | skipped |" + " — |" * 10)
            continue
        ref = mtls_ref(name, rows)
        direct = name == "direct"
        threads = "—" if direct else f"{row.get('threads_a', '?')} / {row.get('threads_b', '?')}"
        out.append("| " + " | ".join([
            row["label"], threads, fmt(row["gbps"], 2), fmt(row["cps"], 0),
            "—" if direct else fmt(row["idle_sum"]),
            "—" if direct else fmt(row["held"]),
            "—" if direct else f"{fmt(row['held_a'])} / {fmt(row['held_b'])}",
            "—" if direct else fmt(row["per_conn_kib"], 1),
            "—" if direct else f"{fmt(row['cpu_tp'], 2)} ({fmt(row['cpu_tp_a'], 2)} / {fmt(row['cpu_tp_b'], 2)})",
            "—" if direct else fmt(row["cpu_per_gb"], 3),
            "—" if direct else fmt(row["cpu_per_conn_us"], 0),
            ratio(row["gbps"], ref.get("gbps")),
            ratio(row["cps"], ref.get("cps")),
            "—" if direct else ratio(row["held"], ref.get("held")),
        ]) + " |")
    out.append("")
    out.append(
        "The direct row is plain TCP to the upstreams (no proxy, no TLS): the ceiling of this "
        "machine, not an mTLS figure. CPU s per GB = CPU seconds of A+B per GB carried by "
        "iperf3 (lower is better; fair across rows of different throughput); CPU µs per conn = "
        "CPU of A+B per completed short connection."
    )
    out.append("")

    # Targets from the issue.
    goals = [
        ("two-hop mTLS throughput", "gbps", "≥ 1.20× Envoy", lambda r: r >= 1.2),
        ("new mTLS connections per second", "cps", "≥ 1.20× Envoy", lambda r: r >= 1.2),
        (f"RSS A+B with {n_idle} idle mTLS connections", "held", "≤ 0.25× Envoy", lambda r: r <= 0.25),
    ]
    pairs = [(s, e) for s, e in (("spoke", "envoy"), ("spoke", "envoy-x25519"),
                                 ("spoke-w2", "envoy-c2"))
             if s in rows and e in rows and not rows[s].get("skipped") and not rows[e].get("skipped")]
    if pairs:
        out += [
            "### Targets (from the issue)",
            "",
            "| goal | target | " + " | ".join(f"`{s}` vs `{e}`" for s, e in pairs) + " |",
            "|---|---|" + "--:|" * len(pairs),
        ]
        for label, key, goal, ok in goals:
            cells = []
            for s, e in pairs:
                a, b = rows[s].get(key), rows[e].get(key)
                if a is None or not b:
                    cells.append("n/a")
                    continue
                r = a / b
                cells.append(f"{r:.2f}× {'met' if ok(r) else '**not met**'}")
            out.append(f"| {label} | {goal} | " + " | ".join(cells) + " |")
        for label, key in (("proxy CPU per GB carried (A+B)", "cpu_per_gb"),
                           ("proxy CPU per new connection (A+B)", "cpu_per_conn_us")):
            cells = []
            for s_, e in pairs:
                a, b = rows[s_].get(key), rows[e].get(key)
                cells.append("n/a" if a is None or not b else f"{a / b:.2f}×")
            out.append(f"| {label} | (no goal; lower is better) | " + " | ".join(cells) + " |")
        out += [
            "",
            "On this 2-core machine the load clients, the upstream and the kernel's loopback TCP "
            "work (three TCP connections per client connection) share the cores with A and B, "
            "so throughput and conns/s move less than the proxies' own cost; the two CPU rows "
            "show the proxies' cost directly.",
        ]
        out.append("")
        if "envoy-x25519" in rows:
            out += [
                "`envoy-x25519` is Envoy with `ecdh_curves: [ X25519 ]` on both sides (classical "
                "key exchange only); by default Envoy 1.40 (BoringSSL) negotiates the hybrid "
                "post-quantum X25519MLKEM768, which costs more bytes and CPU per handshake. The "
                "handshake table shows which group each row actually negotiated (Spoke's included).",
                "",
            ]

    # Handshake probe.
    out += [
        "### What the A→B handshake negotiates",
        "",
        f"After the measurements a second proxy A is started whose upstream is a relay in front "
        f"of B (`bench/handshake-probe.py`); {up.get('probe_conns', '?')} short connections go "
        "through it one after another and the relay reads the cleartext ClientHello and "
        "ServerHello. *Resumed* means B accepted a TLS 1.3 pre-shared key from an earlier "
        "session (PSK with (EC)DHE: a fresh key exchange, but no certificates sent, signed or "
        "verified); *full* is a handshake with both certificates.",
        "",
        "| target | full / resumed | version | cipher | key exchange | ClientHello B | peer checks |",
        "|---|--:|---|---|---|--:|---|",
    ]
    for name in order:
        row = rows[name]
        pr = row.get("probe")
        if name == "direct" or row.get("skipped") or not isinstance(pr, dict):
            continue
        if pr.get("error"):
            out.append(f"| {row['label']} | probe failed: {pr['error']} | | | | | |")
            continue
        keys = lambda d: ", ".join(f"{k}" + (f" ×{v}" if len(d) > 1 else "") for k, v in (d or {}).items()) or "?"
        out.append("| " + " | ".join([
            row["label"], f"{pr.get('full', '?')} / {pr.get('resumed', '?')}"
            + (f" ({pr['ok']}/{pr['count']} ok)" if pr.get("ok") != pr.get("count") else ""),
            keys(pr.get("version")), keys(pr.get("cipher")), keys(pr.get("group")),
            str(pr.get("client_hello_bytes", "?")), PEER_CHECKS.get(name.split("-")[0], "?"),
        ]) + " |")
    out.append("")
    out.append(
        "All three proxies resume TLS sessions on the A→B hop by default (their clients cache "
        "tickets), so in the conns/s runs almost every A→B handshake after the first is a "
        "resumption, not a full handshake with certificates; the configs leave that default "
        "alone for every proxy. HAProxy cannot match a URI SAN: its rows check the chain to the "
        "mesh root only (any workload certificate of the mesh is accepted either way)."
    )
    out.append("")

    errors = [f"`{rows[n]['label']}`: {rows[n]['conn_errors']}" for n in order
              if rows[n].get("conn_errors")]
    if errors:
        notes.append("- connection errors during the conns/s runs: " + ", ".join(errors))
    idle_fail = [f"`{rows[n]['label']}`: {rows[n]['idle_failed']}" for n in order
                 if rows[n].get("idle_failed")]
    if idle_fail:
        notes.append(f"- idle connections that failed to open (those runs are left out of the "
                     f"RSS medians): " + ", ".join(idle_fail))
    exits = [f"`{rows[n]['label']}` exited A {rows[n].get('exit_status_a')} / B {rows[n].get('exit_status_b')}"
             for n in order if n.startswith("spoke")
             and (rows[n].get("exit_status_a"), rows[n].get("exit_status_b")) not in ((0, 0), (None, None))]
    if exits:
        notes.append("- spoke exit status on SIGTERM other than 0: " + ", ".join(exits))
    if notes:
        out += notes + [""]

    out += [
        "### Per-run numbers",
        "",
        "| target | run | Gbit/s | CPU s A / B (iperf) | conns/s | conn errors | p50 µs | p99 µs "
        "| idle conns open | RSS before A / B MiB | RSS held A / B MiB | RSS after close A / B MiB "
        "| other CPU s (iperf / conns) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name in order:
        row = rows[name]
        if row.get("skipped"):
            continue
        n = max(len(row["iperf"]), len(row["connrate"]), len(row["idle"]))
        for i in range(n):
            ip = row["iperf"][i] if i < len(row["iperf"]) else {}
            cr = row["connrate"][i] if i < len(row["connrate"]) else {}
            idr = row["idle"][i].get("result", {}) if i < len(row["idle"]) else {}
            res = cr.get("result") if isinstance(cr.get("result"), dict) else {}
            each = ip.get("proxy_cpu_each_s")
            gbps = fmt(ip["bps"] / 1e9, 2) if ip.get("bps") else f"failed: {ip.get('error', '?')}"

            def ab(key: str) -> str:
                if not isinstance(idr, dict) or key not in idr:
                    return "—"
                return " / ".join(fmt(mib(idr[key][p]["rss_kib"])) for p in ("A", "B"))

            opened = "—"
            if isinstance(idr, dict) and "opened" in idr:
                opened = f"{idr['opened']}/{idr['count']}"
            elif isinstance(idr, dict) and idr.get("error"):
                opened = f"failed: {idr['error']}"
            out.append("| " + " | ".join([
                row["label"], str(i + 1), gbps,
                " / ".join(fmt(v, 2) for v in each) if isinstance(each, list) else "—",
                fmt(res.get("rate"), 0) if res else "failed",
                str(sum(res["errors"].values())) if res else "—",
                str(res.get("p50_us", "—")), str(res.get("p99_us", "—")),
                opened, ab("before"), ab("held"), ab("after_close"),
                f"{fmt(ip.get('other_cpu_s'), 2)} / {fmt(cr.get('other_cpu_s'), 2)}",
            ]) + " |")
    out.append("")
    out += foreign_notes(records, meta)
    out += ["### Commands", "", "```sh"]
    if up:
        out += ["# certificates (bench/out/certs, recreated each run)"]
        out += list(up.get("certs") or [])
        out += [
            "# upstreams",
            f"{up['iperf_server']}",
            f"{up['echo_server']}",
            "# proxies: B (inbound, terminates mTLS) first, then A (outbound)",
        ]
    for name in order:
        row = rows[name]
        if row.get("cmd_b"):
            out.append(f"{row['cmd_b']}")
            out.append(f"{row['cmd_a']}")
    if up:
        out += [
            "# clients; PORT is proxy A's iperf or echo listener (table below), or the upstream "
            "for the direct row",
            f"{up['iperf_client']}",
            f"{up['connrate_client']}",
            f"{up['idle_client']}",
            f"{up['probe_client']}",
        ]
    out += [
        "```",
        "",
        "Configs are rendered from `bench/{spoke,envoy}-mtls-{a,b}.yaml.tmpl` and "
        "`bench/haproxy-mtls-{a,b}.cfg.tmpl`; the rendered files, proxy logs and every raw "
        f"output are in `bench/{meta.get('run_dir', 'out/runs/...')}/` (not committed). "
        "Ports (A's listeners; B listens 10 above A):",
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


# === http ===


def http_rows(records: list[dict]) -> tuple[list[str], dict[str, dict]]:
    order: list[str] = []
    rows: dict[str, dict] = {}
    for r in records:
        if r.get("kind") == "target":
            order.append(r["target"])
            rows[r["target"]] = dict(r, wrk=[], h2load=[], oha=[])
    for r in records:
        if r.get("kind") in ("wrk", "h2load", "oha") and r["target"] in rows:
            rows[r["target"]][r["kind"]].append(r)
    for row in rows.values():
        for tool in ("wrk", "h2load", "oha"):
            ok = [r for r in row[tool] if isinstance(r.get("result"), dict) and "error" not in r["result"]]
            row[tool + "_ok"] = ok
            row[tool + "_failed"] = len(row[tool]) - len(ok)
            row[tool + "_rps"] = median([r["result"].get("rps") for r in ok])
        wrk = row["wrk_ok"]
        row["wrk_p50"] = median([r["result"].get("p50_ms") for r in wrk])
        row["wrk_p99"] = median([r["result"].get("p99_ms") for r in wrk])
        row["wrk_errors"] = sum(r["result"].get("non2xx", 0) + r["result"].get("socket_errors", 0) for r in wrk)
        row["cpu_per_10k"] = median([1e4 * r["proxy_cpu_s"] / r["result"]["requests"] for r in wrk
                                     if r.get("proxy_cpu_s") is not None and r["result"].get("requests")])
        each = [r["proxy_cpu_each_s"] for r in wrk if isinstance(r.get("proxy_cpu_each_s"), list)]
        row["cpu_pct_a"] = median([100 * e[0] / r["wall_s"] for r, e in zip(wrk, each) if len(e) == 2])
        row["cpu_pct_b"] = median([100 * e[1] / r["wall_s"] for r, e in zip(wrk, each) if len(e) == 2])
        h2 = row["h2load_ok"]
        row["h2_errors"] = sum(r["result"].get("failed", 0) + r["result"].get("errored", 0)
                               + r["result"].get("timeout", 0) + r["result"].get("non2xx", 0) for r in h2)
        row["h2_cpu_per_10k"] = median([1e4 * r["proxy_cpu_s"] / r["result"]["requests"] for r in h2
                                        if r.get("proxy_cpu_s") is not None and r["result"].get("requests")])
        oha = row["oha_ok"]
        row["oha_p50"] = median([r["result"].get("p50_ms") for r in oha])
        row["oha_p99"] = median([r["result"].get("p99_ms") for r in oha])
        row["oha_errors"] = sum(r["result"].get("non2xx", 0) + r["result"].get("errors", 0) for r in oha)
        a, b = row.get("hwm_wrk_a_kib"), row.get("hwm_wrk_b_kib")
        row["rss_a"], row["rss_b"] = mib(a), mib(b)
        row["rss"] = mib(a + b) if a is not None and b is not None else None
        ia, ib = row.get("idle_rss_a_kib"), row.get("idle_rss_b_kib")
        row["idle"] = mib(ia + ib) if ia is not None and ib is not None else None
    direct = rows.get("direct", {})
    for name, row in rows.items():
        row["added_p50"] = row["added_p99"] = None
        if name != "direct" and row.get("oha_p50") is not None and direct.get("oha_p50") is not None:
            row["added_p50"] = row["oha_p50"] - direct["oha_p50"]
            row["added_p99"] = row["oha_p99"] - direct["oha_p99"]
    return order, rows


def http_section(records: list[dict], meta: dict) -> list[str]:
    order, rows = http_rows(records)
    up = next((r for r in records if r.get("kind") == "upstreams"), {})
    rate = up.get("rate", "?")
    have_oha = bool(up.get("oha_client"))
    out = [
        "## Two-hop HTTP (`bench/run.sh http`)",
        "",
        "client → proxy A (plaintext HTTP listener, identity `…/sa/web`) → HTTP/2 over mTLS "
        "(TLS 1.3, client certificates) → proxy B (identity `…/sa/backend`, requires `…/sa/web`) "
        f"→ upstream: {up.get('upstream_version') or 'h2o'} with one thread, serving 3 bytes "
        "(`ok\\n`) at `/` over HTTP/1.1 and h2c on one plaintext port. Certificates from `spoke ca` "
        "as in the mtls scenario. A and B are the same proxy with the same worker count.",
        "",
        f"Run {meta.get('date', '?')}; each number is the median of {meta.get('runs', '?')} runs of "
        f"{meta.get('seconds', '?')} s. **wrk**: HTTP/1.1 keep-alive, 1 thread, 64 connections "
        "(B calls the upstream with HTTP/1.1). **h2load**: h2c prior knowledge, 4 connections × 100 "
        "concurrent streams (Spoke's B then calls the upstream with HTTP/2, Envoy's and HAProxy's "
        "B with HTTP/1.1). "
        + (f"**oha**: fixed rate {rate} req/s with latency correction (50 keep-alive connections); "
           "added latency = the row's percentile minus the direct row's (requests oha reports as "
           "`aborted due to deadline`, i.e. still in flight when `-z` ends, are not counted as "
           "errors). " if have_oha else
           "**oha** (fixed-rate latency) was not run: oha was not installed. ")
        + "CPU = utime+stime of A plus B during the wrk runs, per 10,000 requests completed. "
        "RSS under load = VmHWM (peak) of A and of B after the wrk runs.",
        "",
        "| target | wrk req/s | wrk p50 ms | wrk p99 ms | wrk errors | CPU s per 10k req A+B (h2load) "
        "| CPU % A / B (wrk) | h2load req/s | h2load errors | idle RSS A+B MiB | RSS under wrk A / B MiB "
        + (f"| {rate}/s p50 ms | {rate}/s p99 ms | added p50 ms | added p99 ms " if have_oha else "")
        + "|",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|" + ("--:|" * 4 if have_oha else ""),
    ]
    notes = []
    for name in order:
        row = rows[name]
        if row.get("skipped"):
            notes.append(f"- `{row['label']}` skipped: {row['skipped']}")
            out.append(f"| {row['label']} | skipped |" + " — |" * (9 + (4 if have_oha else 0)))
            continue
        d = name == "direct"
        cells = [
            row["label"], fmt(row["wrk_rps"], 0), fmt(row["wrk_p50"], 2), fmt(row["wrk_p99"], 2),
            str(row["wrk_errors"]),
            "—" if d else f"{fmt(row['cpu_per_10k'], 3)} ({fmt(row['h2_cpu_per_10k'], 3)})",
            "—" if d else f"{fmt(row['cpu_pct_a'], 0)} / {fmt(row['cpu_pct_b'], 0)}",
            fmt(row["h2load_rps"], 0), str(row["h2_errors"]),
            "—" if d else fmt(row["idle"]),
            "—" if d else f"{fmt(row['rss_a'])} / {fmt(row['rss_b'])}",
        ]
        if have_oha:
            cells += [fmt(row["oha_p50"], 3), fmt(row["oha_p99"], 3),
                      "—" if d else fmt(row["added_p50"], 3), "—" if d else fmt(row["added_p99"], 3)]
        out.append("| " + " | ".join(cells) + " |")
        for tool in ("wrk", "h2load", "oha"):
            if row.get(tool + "_failed"):
                notes.append(f"- `{row['label']}`: {row[tool + '_failed']} {tool} run(s) failed: "
                             + "; ".join(str(r["result"].get("error"))[:200] for r in row[tool]
                                         if r not in row[tool + "_ok"] and isinstance(r.get("result"), dict)))
        if row.get("oha_errors"):
            notes.append(f"- `{row['label']}`: {row['oha_errors']} oha errors / non-2xx")
    out.append("")
    out.append("wrk errors = non-2xx responses + socket errors; h2load errors = failed + errored + "
               "timed-out + non-2xx requests. The direct row is the upstream alone: the ceiling of "
               "this machine (on 2 cores, load client, upstream and both proxies share the CPUs).")
    out.append("")
    out += notes + ([""] if notes else [])

    # Targets from the issue.
    s, e, h = rows.get("spoke", {}), rows.get("envoy", {}), rows.get("haproxy", {})

    def cmp(label: str, goal: str, a, b, ok, unit_digits=1) -> str:
        if a is None or b is None or not b:
            return f"| {label} | {goal} | {fmt(a, unit_digits)} | {fmt(b, unit_digits)} | n/a | n/a |"
        r = a / b
        verdict = "—" if ok is None else ("met" if ok(r) else "**not met**")
        return f"| {label} | {goal} | {fmt(a, unit_digits)} | {fmt(b, unit_digits)} | {r:.2f}× | {verdict} |"

    if s and e and not s.get("skipped") and not e.get("skipped"):
        out += [
            "### Targets (from the issue): `spoke` (1 worker each) vs `envoy` (--concurrency 1 each)",
            "",
            "| goal | target | spoke | reference | ratio | |",
            "|---|---|--:|--:|--:|---|",
            cmp("wrk req/s (HTTP/1.1 keep-alive)", "≥ 2× Envoy", s["wrk_rps"], e["wrk_rps"], lambda r: r >= 2, 0),
            cmp("wrk req/s (HTTP/1.1 keep-alive)", "≥ HAProxy", s["wrk_rps"], h.get("wrk_rps"), lambda r: r >= 1, 0)
            if h and not h.get("skipped") else "| wrk req/s | ≥ HAProxy | — | haproxy skipped | n/a | n/a |",
            cmp("proxy CPU s per 10k requests (wrk, A+B)", "≤ 0.5× Envoy", s["cpu_per_10k"], e["cpu_per_10k"],
                lambda r: r <= 0.5, 3),
            cmp(f"added latency p50 at {rate} req/s", "≤ 0.5× Envoy", s["added_p50"], e["added_p50"],
                lambda r: r <= 0.5, 3),
            cmp(f"added latency p99 at {rate} req/s", "≤ 0.5× Envoy", s["added_p99"], e["added_p99"],
                lambda r: r <= 0.5, 3),
            cmp("h2load req/s (h2c)", "≥ 2× Envoy", s["h2load_rps"], e["h2load_rps"], lambda r: r >= 2, 0),
            cmp("RSS under load A+B MiB (VmHWM after wrk)", "≤ 0.2× Envoy", s["rss"], e["rss"], lambda r: r <= 0.2),
            "",
        ]
        if not have_oha:
            out += ["The two added-latency goals are n/a: oha was not installed, so no fixed-rate run.", ""]
    if s and h and not s.get("skipped") and not h.get("skipped"):
        out += [
            "### Targets (performance issue, goals 1 and 2): `spoke` (1 worker each) vs `haproxy` "
            "(nbthread 1 each, `http-reuse always`)",
            "",
            "| goal | target | spoke | haproxy | ratio | |",
            "|---|---|--:|--:|--:|---|",
            cmp("wrk req/s (HTTP/1.1 keep-alive)", "≥ 1.0× HAProxy (stretch 1.3×)", s["wrk_rps"], h["wrk_rps"],
                lambda r: r >= 1, 0),
            cmp("proxy CPU s per 10k requests (wrk, A+B)", "≤ HAProxy", s["cpu_per_10k"], h["cpu_per_10k"],
                lambda r: r <= 1, 3),
            cmp("h2load req/s (h2c)", "≥ 1.5× HAProxy", s["h2load_rps"], h["h2load_rps"], lambda r: r >= 1.5, 0),
            cmp("proxy CPU s per 10k requests (h2load, A+B)", "(no goal; lower is better)", s["h2_cpu_per_10k"],
                h["h2_cpu_per_10k"], None, 3),
            "",
        ]
        if s.get("wrk_errors") or s.get("h2_errors") or s.get("oha_errors"):
            out += [f"Spoke had errors: wrk {s.get('wrk_errors')}, h2load {s.get('h2_errors')}, "
                    f"oha {s.get('oha_errors')}.", ""]

    out += [
        "### Per-run numbers",
        "",
        "| target | tool | run | req/s | p50 ms | p99 ms | requests | errors | proxy CPU s (A / B) | other CPU s |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name in order:
        row = rows[name]
        if row.get("skipped"):
            continue
        for tool in ("wrk", "h2load", "oha"):
            for r in row[tool]:
                res = r.get("result") if isinstance(r.get("result"), dict) else {}
                if "error" in res:
                    out.append(f"| {row['label']} | {tool} | {r['run']} | failed: {str(res['error'])[:80]} |"
                               + " — |" * 6)
                    continue
                err = (res.get("non2xx", 0) + res.get("socket_errors", 0) + res.get("failed", 0)
                       + res.get("errored", 0) + res.get("timeout", 0) + res.get("errors", 0))
                each = r.get("proxy_cpu_each_s")
                cpu = "—" if not isinstance(each, list) else (
                    f"{fmt(r.get('proxy_cpu_s'), 2)} ({' / '.join(fmt(x, 2) for x in each)})")
                out.append("| " + " | ".join([
                    row["label"], tool, str(r["run"]), fmt(res.get("rps"), 0),
                    fmt(res.get("p50_ms"), 3) if tool != "h2load" else "—",
                    fmt(res.get("p99_ms"), 3) if tool != "h2load" else "—",
                    str(res.get("requests", "—")), str(err), cpu, fmt(r.get("other_cpu_s"), 2),
                ]) + " |")
    out.append("")
    out += foreign_notes(records, meta)
    out += ["### Commands", "", "```sh"]
    out += [f"{c}" for c in (up.get("certs") or [])]
    if up:
        out.append(f"{up.get('upstream', '')}     # upstream, port {up.get('upstream_port')}")
    for name in order:
        row = rows[name]
        if row.get("cmd_b"):
            out += [f"{row['cmd_b']}     # {name} B", f"{row['cmd_a']}     # {name} A"]
    if up:
        out += [f"{up.get('wrk_client')}     # PORT: {up.get('upstream_port')} direct, else proxy A's listener",
                f"{up.get('h2load_client')}"]
        if have_oha:
            out.append(f"{up.get('oha_client')}")
    out += [
        "```",
        "",
        "Configs are rendered from `bench/{spoke,envoy,haproxy}-http-{a,b}.*.tmpl` and "
        "`bench/h2o-upstream.conf.tmpl`; rendered files and raw client outputs are in "
        f"`bench/{meta.get('run_dir', 'out/runs/...')}/` (not committed). Versions: "
        f"{up.get('h2load_version', 'h2load ?')}"
        + (f", {up.get('oha_version')}" if up.get("oha_version") else "") + ".",
        "",
        "| target | proxy A listener |",
        "|---|--:|",
    ]
    for name in order:
        row = rows[name]
        if not row.get("skipped"):
            out.append(f"| {row['label']} | {row.get('port')} |")
    out.append("")
    return out


# === onehop ===


def idle_cell(row: dict) -> str:
    """Idle RSS, and for a proxy of several processes (nginx) each one's, master first."""
    each = row.get("idle_rss_each_kib") or []
    if len(each) < 2:
        return fmt(row["idle1"])
    return f"{fmt(row['idle1'])} ({' + '.join(fmt(mib(k)) for k in each)})"


def onehop_section(records: list[dict], meta: dict) -> list[str]:
    order, rows = http_rows(records)
    up = next((r for r in records if r.get("kind") == "upstreams"), {})
    for row in rows.values():
        row["cpu_pct"] = median([100 * r["proxy_cpu_s"] / r["wall_s"] for r in row["wrk_ok"]
                                 if r.get("proxy_cpu_s") is not None and r.get("wall_s")])
        row["idle1"] = mib(row.get("idle_rss_kib"))
        row["loaded1"] = mib(row.get("hwm_wrk_kib"))
    out = [
        "## One hop of plain HTTP (`bench/run.sh onehop`)",
        "",
        f"client → proxy (plaintext HTTP listener) → upstream: {up.get('upstream_version') or 'h2o'} "
        "with one thread, as in the http scenario. HTTP/1.1 keep-alive on both sides; every proxy "
        "with one worker, no access log, pooled keep-alive connections to the upstream at its best "
        "documented settings (HAProxy `http-reuse always`; nginx `keepalive 64`, "
        "`proxy_http_version 1.1`, `keepalive_requests` raised on both sides). nginx "
        f"({up.get('nginx_version') or 'nginx'}) runs as master + one worker; its RSS and CPU are "
        "the sum of both processes.",
        "",
        f"Run {meta.get('date', '?')}; each number is the median of {meta.get('runs', '?')} runs of "
        f"{meta.get('seconds', '?')} s of wrk (1 thread, 64 connections). CPU = the proxy's "
        "utime+stime during the wrk runs, per 10,000 requests completed. Idle RSS = VmRSS 3 s "
        "after the proxy is ready (no certificate: plain HTTP); RSS under load = VmHWM after the "
        "wrk runs.",
        "",
        "| target | wrk req/s | p50 ms | p99 ms | errors | CPU s per 10k req | CPU % | idle RSS MiB "
        "| RSS under wrk MiB |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    notes = []
    for name in order:
        row = rows[name]
        if row.get("skipped"):
            notes.append(f"- `{row['label']}` skipped: {row['skipped']}")
            out.append(f"| {row['label']} | skipped |" + " — |" * 7)
            continue
        d = name == "direct"
        out.append("| " + " | ".join([
            row["label"], fmt(row["wrk_rps"], 0), fmt(row["wrk_p50"], 2), fmt(row["wrk_p99"], 2),
            str(row["wrk_errors"]), "—" if d else fmt(row["cpu_per_10k"], 3),
            "—" if d else fmt(row["cpu_pct"], 0), "—" if d else idle_cell(row),
            "—" if d else fmt(row["loaded1"]),
        ]) + " |")
        if row.get("wrk_failed"):
            notes.append(f"- `{row['label']}`: {row['wrk_failed']} wrk run(s) failed")
    out.append("")
    out += notes + ([""] if notes else [])

    s = rows.get("spoke", {})

    def goal(label: str, target: str, key: str, peer: str, ok, digits: int) -> str:
        p = rows.get(peer, {})
        a, b = s.get(key), p.get(key)
        if not a or not b or p.get("skipped"):
            return f"| {label} | {target} | {fmt(a, digits)} | {peer} n/a | n/a | n/a |"
        r = a / b
        verdict = "—" if ok is None else ("met" if ok(r) else "**not met**")
        return f"| {label} | {target} | {fmt(a, digits)} | {peer} {fmt(b, digits)} | {r:.2f}× | {verdict} |"

    if s and not s.get("skipped"):
        out += [
            "### Targets (performance issue, goal 1 one hop; goal 5 against nginx)",
            "",
            "| goal | target | spoke | peer | ratio | |",
            "|---|---|--:|--:|--:|---|",
            goal("wrk req/s", "≥ 1.0× HAProxy (stretch 1.3×)", "wrk_rps", "haproxy", lambda r: r >= 1, 0),
            goal("proxy CPU s per 10k requests", "≤ HAProxy", "cpu_per_10k", "haproxy", lambda r: r <= 1, 3),
            goal("wrk req/s", "(no goal)", "wrk_rps", "nginx", None, 0),
            goal("proxy CPU s per 10k requests", "(no goal)", "cpu_per_10k", "nginx", None, 3),
            goal("wrk req/s", "(no goal)", "wrk_rps", "envoy", None, 0),
            goal("idle RSS MiB (plain)", "below nginx", "idle1", "nginx", lambda r: r < 1, 1),
            goal("idle RSS MiB (plain)", "(no goal)", "idle1", "envoy", None, 1),
            goal("RSS under wrk MiB", "(no goal)", "loaded1", "nginx", None, 1),
            "",
        ]
    out += per_run_table(order, rows)
    out += foreign_notes(records, meta)
    out += ["### Commands", "", "```sh"]
    if up:
        out.append(f"{up.get('upstream', '')}     # upstream, port {up.get('upstream_port')}")
    for name in order:
        row = rows[name]
        if row.get("cmd"):
            out.append(f"{row['cmd']}     # {name}, listener {row.get('port')}")
    if up:
        out.append(f"{up.get('wrk_client')}     # PORT: {up.get('upstream_port')} direct, else the proxy's listener")
    out += [
        "```",
        "",
        "Configs are rendered from `bench/{spoke,envoy,haproxy,nginx}-onehop.*.tmpl`; rendered "
        f"files and raw client outputs are in `bench/{meta.get('run_dir', 'out/runs/...')}/` (not committed).",
        "",
    ]
    return out


# === authz ===


def pair_table(order: list[str], rows: dict[str, dict]) -> list[str]:
    """The medians of side-by-side pairs (the authz, routes and defaults scenarios)."""
    out = ["| target | wrk req/s | wrk p99 ms | wrk errors | CPU s per 10k req A+B (wrk) | h2load req/s | h2load errors | CPU s per 10k req A+B (h2load) |",
           "|---|--:|--:|--:|--:|--:|--:|--:|"]
    for name in order:
        row = rows[name]
        if row.get("skipped"):
            out.append(f"| {row['label']} | skipped: {row['skipped']} |" + " — |" * 6)
            continue
        out.append("| " + " | ".join([
            row["label"], fmt(row["wrk_rps"], 0), fmt(row["wrk_p99"], 2), str(row["wrk_errors"]),
            fmt(row["cpu_per_10k"], 3), fmt(row["h2load_rps"], 0), str(row["h2_errors"]),
            fmt(row["h2_cpu_per_10k"], 3),
        ]) + " |")
    out.append("")
    return out


def goal_rows(a: dict, b: dict, what: str, keys: tuple, target: float, more: bool) -> list[str]:
    """Goal rows comparing variant `b` with reference `a`: for each (label, key), the cost in
    percent (fewer req/s when `more` is false, more CPU when true) against `target`."""
    out = []
    for label, key in keys:
        x, y = a.get(key), b.get(key)
        if not (x and y):
            continue
        cost = 100 * (y / x - 1) if more else 100 * (1 - y / x)
        shown = f"{cost:+.1f}%" if more else f"{cost:.1f}%"
        digits = 3 if more else 0
        bound = f"≤ {target:g}% {'more' if more else 'fewer'}"
        out.append(f"| {what}{label} | {bound} | {fmt(x, digits)} | {fmt(y, digits)} | {shown} "
                   f"| {'met' if cost <= target else '**not met**'} |")
    return out


RPS_KEYS = (("wrk req/s", "wrk_rps"), ("h2load req/s", "h2load_rps"))
CPU_KEYS = (("CPU s per 10k req (wrk)", "cpu_per_10k"), ("CPU s per 10k req (h2load)", "h2_cpu_per_10k"))


def per_run_table(order: list[str], rows: dict[str, dict]) -> list[str]:
    """Every wrk and h2load run of side-by-side pairs (the authz, tracing and lb scenarios)."""
    out = ["### Per-run numbers", "", "| target | tool | run | req/s | requests | errors | proxy CPU s |",
           "|---|---|--:|--:|--:|--:|--:|"]
    for name in order:
        row = rows[name]
        for tool in ("wrk", "h2load"):
            for r in row.get(tool, []):
                res = r.get("result") if isinstance(r.get("result"), dict) else {}
                err = (res.get("non2xx", 0) + res.get("socket_errors", 0) + res.get("failed", 0)
                       + res.get("errored", 0) + res.get("timeout", 0))
                out.append(f"| {row['label']} | {tool} | {r['run']} | {fmt(res.get('rps'), 0)} | "
                           f"{res.get('requests', '—')} | {err} | {fmt(r.get('proxy_cpu_s'), 2)} |")
    out.append("")
    return out


def authz_section(records: list[dict], meta: dict) -> list[str]:
    order, rows = http_rows(records)
    out = [
        "## Per-request authorization (`bench/run.sh authz`)",
        "",
        "The two-hop HTTP chain of the http scenario (Spoke A+B, 1 worker each), once with B's "
        "port under the short-form allow list (`spoke`) and once under a 20-rule policy "
        "(`spoke-authz`: 10 deny and 10 allow rules by identity, method, path and header, the "
        "matching rule last, path normalisation on; `bench/spoke-authz-http-b.yaml.tmpl`). Both "
        "pairs run side by side and the runs alternate between them (wrk, then h2load), so "
        f"drift hits both alike. Run {meta.get('date', '?')}; medians of {meta.get('runs', '?')} "
        f"runs of {meta.get('seconds', '?')} s; CPU = utime+stime of A plus B per 10,000 requests.",
        "",
    ]
    out += pair_table(order, rows)
    base, pol = rows.get("spoke", {}), rows.get("spoke-authz", {})
    if base and pol and not base.get("skipped") and not pol.get("skipped"):
        out += ["| goal | target | no policy | 20 rules | cost | |", "|---|---|--:|--:|--:|---|"]
        for label, key in (("wrk req/s (HTTP/1.1)", "wrk_rps"), ("h2load req/s (h2c)", "h2load_rps")):
            a, b = base.get(key), pol.get(key)
            if a and b:
                cost = 100 * (1 - b / a)
                out.append(f"| {label} | ≤ 2% fewer | {fmt(a, 0)} | {fmt(b, 0)} | {cost:.1f}% "
                           f"| {'met' if cost <= 2 else '**not met**'} |")
        for label, key in (("CPU s per 10k req (wrk)", "cpu_per_10k"), ("CPU s per 10k req (h2load)", "h2_cpu_per_10k")):
            a, b = base.get(key), pol.get(key)
            if a and b:
                out.append(f"| {label} | (information) | {fmt(a, 3)} | {fmt(b, 3)} | {100 * (b / a - 1):+.1f}% | |")
        out.append("")
    out += per_run_table(order, rows)
    out += foreign_notes(records, meta)
    return out


# === routes ===


def routes_section(records: list[dict], meta: dict) -> list[str]:
    order, rows = http_rows(records)
    snap = next((r.get("result") for r in records if r.get("kind") == "snapshot"), None)
    out = [
        "## Cost with a thousand routes (`bench/run.sh routes`)",
        "",
        "The two-hop HTTP chain of the http scenario (Spoke A+B, 1 worker each) twice: as it is "
        "(`spoke`: one cluster, no routes) and with proxy A given 1,000 host routes "
        "(`svc-N.example`, none of which matches the benchmark's requests, so a linear scan "
        "would try all 1,000 before the listener's default cluster) and 1,000 clusters more "
        "(`spoke-routes`). The pairs run side by side and the runs alternate. "
        f"Run {meta.get('date', '?')}; medians of {meta.get('runs', '?')} runs of "
        f"{meta.get('seconds', '?')} s; CPU = utime+stime of A plus B per 10,000 requests.",
        "",
    ]
    out += pair_table(order, rows)
    a, b = rows.get("spoke", {}), rows.get("spoke-routes", {})
    if a and b and not a.get("skipped") and not b.get("skipped"):
        out += ["| goal | target | 1 route | 1,000 routes | cost | |", "|---|---|--:|--:|--:|---|"]
        out += goal_rows(a, b, "", CPU_KEYS, 10, more=True)
        for label, key in RPS_KEYS:
            x, y = a.get(key), b.get(key)
            if x and y:
                out.append(f"| {label} | (information) | {fmt(x, 0)} | {fmt(y, 0)} | {100 * (y / x - 1):+.1f}% | |")
        out.append("")
    if isinstance(snap, dict):
        out += [
            "### A config swap at scale (`examples/snapshot_build`)",
            "",
            f"{snap.get('clusters')} clusters x {snap.get('endpoints', 0) // max(snap.get('clusters', 1), 1)} endpoints "
            f"({snap.get('endpoints')} endpoints) and {snap.get('routes')} host routes "
            f"({snap.get('yaml_bytes', 0) / 1024:.0f} KiB of YAML), medians of {snap.get('rounds')} rounds. "
            "The swap itself is one atomic pointer store; requests in flight keep the snapshot they started with.",
            "",
            "| stage | time |",
            "|---|--:|",
            f"| parse + validate the YAML | {fmt(snap.get('parse_validate_ms'), 2)} ms |",
            f"| build the snapshot (cluster state, route index, policies) | {fmt(snap.get('snapshot_build_ms'), 2)} ms |",
            f"| adopt the runtime state of the last snapshot | {fmt(snap.get('adopt_ms'), 2)} ms |",
            f"| swap (`ArcSwap::swap`) | {fmt(snap.get('swap_us'), 2)} µs |",
            f"| free the old snapshot (by its last holder, off the swap) | {fmt(snap.get('free_old_ms'), 2)} ms |",
            "",
            f"RSS: {snap.get('rss_before_kib')} KiB before, {snap.get('rss_one_snapshot_kib')} KiB holding one "
            f"snapshot (the parsed config and its YAML text included), {snap.get('rss_after_swaps_kib')} KiB after "
            f"{snap.get('rounds')} swaps (flat: old snapshots are freed).",
            "",
        ]
    out += per_run_table(order, rows)
    out += foreign_notes(records, meta)
    return out


# === defaults ===


def defaults_section(records: list[dict], meta: dict) -> list[str]:
    order, rows = http_rows(records)
    out = [
        "## Out of the box (`bench/run.sh defaults`)",
        "",
        "The two-hop HTTP chain of the http scenario four times: tuned as in every other row "
        "(`spoke`: 1 worker, `--log-level warn`), started with no flags at all "
        "(`spoke-defaults`: the default worker count, which follows the cgroup CPU limit and "
        "is 1 without one, and the default `info` level), and that with `access_log: true` "
        "(`spoke-access`: one access line per request on each hop, written to the log file by "
        "the log writer thread), and that once more with the proxies' stderr on `/dev/null` "
        "(`spoke-access-null`: the same lines formatted, batched and written, without the file "
        "system's cost of appending them to a file; in a pod the container runtime does that "
        "append, not the sidecar). The pairs run side by side and the runs alternate between "
        f"them. Run {meta.get('date', '?')}; medians of {meta.get('runs', '?')} runs of "
        f"{meta.get('seconds', '?')} s; CPU = utime+stime of A plus B per 10,000 requests.",
        "",
    ]
    out += pair_table(order, rows)
    goals = (("spoke-defaults", "spoke", "out of the box vs tuned"),
             ("spoke-access", "spoke-defaults", "access log on vs off"),
             ("spoke-access-null", "spoke-defaults", "access log on, stderr to /dev/null, vs off"))
    lines = []
    for name, ref, what in goals:
        a, b = rows.get(ref, {}), rows.get(name, {})
        if not a or not b or a.get("skipped") or b.get("skipped"):
            continue
        lines += goal_rows(a, b, f"{what}: ", RPS_KEYS, 5, more=False)
        lines += goal_rows(a, b, f"{what}: ", CPU_KEYS, 5, more=True)
    if lines:
        out += ["| goal | target | reference | variant | cost | |", "|---|---|--:|--:|--:|---|"] + lines + [""]
    out += per_run_table(order, rows)
    out += foreign_notes(records, meta)
    return out


# === tracing ===


TRACING_GOALS = {"spoke-trace0": 1.0, "spoke-trace1": 10.0}


def tracing_section(records: list[dict], meta: dict) -> list[str]:
    order, rows = http_rows(records)
    spans = {r["target"]: r for r in records if r.get("kind") == "spans"}
    sink = next((r.get("stats") for r in records if r.get("kind") == "sink"), None)
    out = [
        "## Tracing (`bench/run.sh tracing`)",
        "",
        "The two-hop HTTP chain of the http scenario (Spoke A+B, 1 worker each) three times: "
        "tracing off (`spoke`), `tracing: { sampling: 0 }` (`spoke-trace0`: every request's "
        "context is looked for, none is sampled) and `sampling: 1` (`spoke-trace1`: two spans "
        "per request, exported over OTLP/HTTP in batches to `bench/otlp-sink.c`, which only "
        "counts (a C stand-in for a remote collector); `bench/spoke-trace-http-{a,b}.yaml.tmpl`). The pairs run side by side and the "
        "runs alternate between them (wrk, then h2load), so drift hits all alike. "
        f"Run {meta.get('date', '?')}; medians of {meta.get('runs', '?')} runs of "
        f"{meta.get('seconds', '?')} s; CPU = utime+stime of A plus B per 10,000 requests.",
        "",
        "| target | wrk req/s | wrk p99 ms | wrk errors | CPU s per 10k req A+B (wrk) | h2load req/s | h2load errors | CPU s per 10k req A+B (h2load) | spans exported | spans dropped |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name in order:
        row = rows[name]
        if row.get("skipped"):
            out.append(f"| {row['label']} | skipped: {row['skipped']} |" + " — |" * 8)
            continue
        sp = spans.get(name, {})
        out.append("| " + " | ".join([
            row["label"], fmt(row["wrk_rps"], 0), fmt(row["wrk_p99"], 2), str(row["wrk_errors"]),
            fmt(row["cpu_per_10k"], 3), fmt(row["h2load_rps"], 0), str(row["h2_errors"]),
            fmt(row["h2_cpu_per_10k"], 3), str(sp.get("exported", "—")), str(sp.get("dropped", "—")),
        ]) + " |")
    out.append("")
    base = rows.get("spoke", {})
    if base and not base.get("skipped"):
        out += ["| goal | target | tracing off | traced | cost | |", "|---|---|--:|--:|--:|---|"]
        for name, limit in TRACING_GOALS.items():
            row = rows.get(name, {})
            if not row or row.get("skipped"):
                continue
            for label, key in (("wrk req/s (HTTP/1.1)", "wrk_rps"), ("h2load req/s (h2c)", "h2load_rps")):
                a, b = base.get(key), row.get(key)
                if a and b:
                    cost = 100 * (1 - b / a)
                    out.append(f"| {label} | {name}: ≤ {limit:g}% fewer | {fmt(a, 0)} | {fmt(b, 0)} | "
                               f"{cost:.1f}% | {'met' if cost <= limit else '**not met**'} |")
        out.append("")
    if isinstance(sink, dict):
        out += [f"The sink received {sink.get('exports', '?')} export requests "
                f"({fmt((sink.get('bytes') or 0) / 1048576, 1)} MiB) in the whole run.", ""]
    out += per_run_table(order, rows)
    out += foreign_notes(records, meta)
    return out


# === lb ===


def lb_section(records: list[dict], meta: dict) -> list[str]:
    out = ["## Load balancing (`bench/run.sh lb`)", ""]
    pick = next((r for r in records if r.get("kind") == "pick"), None)
    if pick and isinstance(pick.get("result"), list):
        out += [
            "### Cost of one pick (`examples/lb_pick`, 100 endpoints, weights 1-3, one level)",
            "",
            "| balancer | all in service: ns per pick | 10 ejected: ns per pick | target < 200 ns |",
            "|---|--:|--:|---|",
        ]
        by = {}
        for r in pick["result"]:
            by.setdefault(r["lb"], {})[r["ejected"]] = r["ns_per_pick"]
        for lb, v in by.items():
            worst = max(v.values())
            out.append(f"| {lb} | {fmt(v.get(0), 1)} | {fmt(v.get(10), 1)} | {'met' if worst < 200 else '**not met**'} |")
        out.append("")
    rate = [r for r in records if r.get("kind") == "rate"]
    if rate:
        client = next((r.get("client") for r in records if r.get("kind") == "rate_client"), "")
        out += [
            "### Tail latency with a slow replica",
            "",
            "One Spoke hop (1 worker) in front of three replicas (`examples/delay_server`); in the `slow` rows one "
            "of them adds 50 ms. Load: `examples/rate_load` at a fixed rate over 64 keep-alive connections, "
            "latency measured from each request's scheduled start. Medians of "
            f"{meta.get('runs', '?')} runs of {meta.get('seconds', '?')} s. Client: `{client}`.",
            "",
            "| variant | balancer | p50 ms | p90 ms | p99 ms | errors |",
            "|---|---|--:|--:|--:|--:|",
        ]
        rows = {}
        for r in rate:
            rows.setdefault(r["variant"], {"lb": r.get("lb"), "runs": []})["runs"].append(r.get("result") or {})
        med = {}
        for v, row in rows.items():
            ok = [x for x in row["runs"] if "p99_ms" in x]
            m = {k: median([x.get(k) for x in ok]) for k in ("p50_ms", "p90_ms", "p99_ms")}
            m["errors"] = sum(x.get("errors", 0) for x in ok)
            med[v] = m
            out.append(f"| {v} | {row['lb']} | {fmt(m['p50_ms'], 2)} | {fmt(m['p90_ms'], 2)} | "
                       f"{fmt(m['p99_ms'], 2)} | {m['errors']} |")
        out.append("")
        h, s_ = med.get("healthy", {}), med.get("slow-least-request", {})
        if h.get("p99_ms") and s_.get("p99_ms"):
            r = s_["p99_ms"] / h["p99_ms"]
            out += ["| goal | target | all healthy | one slow, least_request | ratio | |",
                    "|---|---|--:|--:|--:|---|",
                    f"| p99 | ≤ 1.5× all-healthy | {fmt(h['p99_ms'], 2)} | {fmt(s_['p99_ms'], 2)} | {r:.2f}× "
                    f"| {'met' if r <= 1.5 else '**not met**'} |", ""]
    order, hrows = http_rows([r for r in records if r.get("kind") in ("target", "wrk", "h2load", "oha")])
    if order:
        out += [
            "### Two hops: the default balancer, breaker and outlier detection against round robin",
            "",
            "The http scenario's chain (Spoke A+B, 1 worker each, HTTP/2 over mTLS between them); A's "
            "cluster with the default `least_request` (`spoke`), with `lb: round_robin` (`spoke-rr`), "
            "and, when given, a build from before the resilience work (`spoke-baseline`, round robin "
            "with no breaker or outlier detection). Runs alternate between the pairs.",
            "",
            "| target | wrk req/s | CPU s per 10k req A+B | h2load req/s | errors |",
            "|---|--:|--:|--:|--:|",
        ]
        for name in order:
            row = hrows[name]
            if row.get("skipped"):
                out.append(f"| {row['label']} | skipped: {row['skipped']} | — | — | — |")
                continue
            out.append(f"| {row['label']} | {fmt(row['wrk_rps'], 0)} | {fmt(row['cpu_per_10k'], 3)} | "
                       f"{fmt(row['h2load_rps'], 0)} | {row['wrk_errors'] + row['h2_errors']} |")
        out.append("")
        new = hrows.get("spoke", {})
        for ref_name in ("spoke-baseline", "spoke-rr"):
            ref = hrows.get(ref_name, {})
            if new.get("wrk_rps") and ref.get("wrk_rps") and not ref.get("skipped"):
                cost = 100 * (1 - new["wrk_rps"] / ref["wrk_rps"])
                out.append(f"- `spoke` vs `{ref_name}`: {cost:+.1f}% fewer wrk req/s "
                           f"(target ≤ 3% vs the baseline: {'met' if cost <= 3 else '**not met**'})")
        out.append("")
    out += foreign_notes(records, meta)
    return out


# === control ===


def control_section(records: list[dict], meta: dict) -> list[str]:
    setup = next((r for r in records if r.get("kind") == "setup"), {})
    push = [r for r in records if r.get("kind") == "push"]
    many = next((r for r in records if r.get("kind") == "many"), {})
    swaps = next((r for r in records if r.get("kind") == "swaps"), {})
    out = [
        "## Control plane (`bench/run.sh control`)",
        "",
        f"Run {meta.get('date', '?')}. `spoke control` (one process, default runtime) with a CA from "
        "`spoke ca init` and a mesh directory under the run dir; load from "
        "`target/release/examples/control_load` (discovery-stream clients, each its own TLS "
        "connection, ACKing every push; it rewrites `zz-bench-load.yaml` in the mesh directory and "
        "times each client's arrival of the new version).",
        "",
        "### Push latency",
        "",
        f"{setup.get('clients', '?')} connected streams, {setup.get('changes', '?')} config changes per "
        "run (150 ms apart). Per-client latency = file rename → that client has the new version; "
        "all-clients = rename → the last client has it.",
        "",
        "| run | streams | connected in ms | p50 ms | p99 ms | max ms | all-clients p50 ms | all-clients p99 ms "
        "| control CPU s | control RSS MiB after |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in push:
        res = r.get("result") or {}
        if "error" in res:
            out.append(f"| {r['run']} | failed: {str(res['error'])[:120]} |" + " — |" * 8)
            continue
        out.append("| " + " | ".join([
            str(r["run"]), str(res.get("clients")), fmt(res.get("connected_in_ms"), 0),
            fmt(res.get("p50_ms")), fmt(res.get("p99_ms")), fmt(res.get("max_ms")),
            fmt(res.get("all_clients_p50_ms")), fmt(res.get("all_clients_p99_ms")),
            fmt(r.get("control_cpu_s"), 2), fmt(mib(r.get("rss_kib"))),
        ]) + " |")
    ok_push = [r["result"] for r in push if "error" not in (r.get("result") or {"error": 1})]
    p99 = median([r.get("p99_ms") for r in ok_push])
    out.append("")

    out += [
        "### Memory with many streams",
        "",
        f"`control_load` opens {many.get('clients', '?')} streams (one change so that all of them "
        "have been pushed to), then holds them; VmRSS of the control plane is read 3 s into the hold. "
        "Idle = after start-up, before any client.",
        "",
        "| streams | connected in ms | `spoke_control_sidecars` | idle RSS MiB | RSS with streams MiB "
        "| peak (VmHWM) MiB | KiB per stream | RSS 2 s after the clients left MiB | threads |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    idle = setup.get("idle_rss_kib")
    rss = many.get("rss_kib")
    per = (rss - idle) / many["clients"] if rss is not None and idle is not None and many.get("clients") else None
    if many:
        res = many.get("result") or {}
        out.append("| " + " | ".join([
            str(many.get("clients")), fmt(res.get("connected_in_ms"), 0), fmt(many.get("sidecars"), 0),
            fmt(mib(idle)), fmt(mib(rss)), fmt(mib(many.get("hwm_kib"))), fmt(per, 1),
            fmt(mib(many.get("rss_after_close_kib"))), str(many.get("threads")),
        ]) + " |")
        if many.get("error"):
            out += ["", f"Error: {many['error']}"]
    out.append("")

    out += ["### Config swaps under load", ""]
    sw_rps = sw_err = pushed = None
    if swaps.get("skipped"):
        out += [f"Skipped: {swaps['skipped']}", ""]
    elif swaps:
        w = swaps.get("wrk") or {}
        before, after = swaps.get("status_before") or {}, swaps.get("status_after") or {}

        def ver(v):
            try:
                return int(v)
            except (TypeError, ValueError):
                return None

        v0, v1 = ver(before.get("version")), ver(after.get("version"))
        pushed = None if v0 is None or v1 is None else v1 - v0
        sw_rps = w.get("rps")
        sw_err = None if "error" in w else w.get("non2xx", 0) + w.get("socket_errors", 0)
        cars = after.get("sidecars") or []
        out += [
            "Two sidecars fed by the control plane (no `tls:` in their files: certificates, clusters, "
            "route and inbound policy all come from the stream): A = node `web-0` (plaintext HTTP "
            "listener, route splitting between two meshed clusters that both lead to B), B = node "
            "`backend-0` (inbound, forwards to the h2o upstream). "
            f"`{swaps.get('wrk_cmd')}` through A while `bench/run.sh` rewrites the mesh file "
            f"{swaps.get('hz')} times a second (split 50/50 ↔ 90/10, atomic rename), "
            f"{swaps.get('writes')} writes in all. Versions pushed = the control plane's version "
            "after − before.",
            "",
            "| req/s | p50 ms | p99 ms | requests | non-2xx | socket errors | mesh writes | versions pushed "
            "| CPU s A / B / control |",
            "|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
            "| " + " | ".join([
                fmt(sw_rps, 0), fmt(w.get("p50_ms"), 2), fmt(w.get("p99_ms"), 2), str(w.get("requests", "—")),
                str(w.get("non2xx", "—")), str(w.get("socket_errors", "—")), str(swaps.get("writes")),
                f"{pushed} ({v0} → {v1})",
                " / ".join(fmt(x, 2) for x in (swaps.get("cpu_s_a_b_control") or [])) or "—",
            ]) + " |",
            "",
            "| sidecar | identity | sent_version | acked_version | last_nack | `spoke_config_updates_total` during the run |",
            "|---|---|--:|--:|---|--:|",
        ]
        deltas = {}
        for role, node in (("a", "web-0"), ("b", "backend-0")):
            a0, a1 = swaps.get(f"updates_{role}_before"), swaps.get(f"updates_{role}_after")
            deltas[node] = None if a0 is None or a1 is None else a1 - a0
        for c in cars:
            out.append("| " + " | ".join([
                str(c.get("node_id")), str(c.get("identity")), str(c.get("sent_version")),
                str(c.get("acked_version")), str(c.get("last_nack") or "—"),
                fmt(deltas.get(c.get("node_id")), 0),
            ]) + " |")
        if after.get("config_error"):
            out.append(f"\nThe control plane reported `config_error`: {after['config_error']}")
        out.append("")

    def goal(label, target, value, ok, digits=1):
        if value is None:
            return f"| {label} | {target} | n/a | n/a |"
        return f"| {label} | {target} | {fmt(value, digits)} | {'met' if ok(value) else '**not met**'} |"

    rss_mb = None if rss is None else rss * 1024 / 1e6
    out += [
        "### Targets (from the issue)",
        "",
        "| goal | target | measured | |",
        "|---|---|--:|---|",
        goal(f"push latency p99 with {setup.get('clients', '?')} streams (median of runs), ms", "< 100 ms",
             p99, lambda v: v < 100),
        goal(f"control plane RSS with {many.get('clients', '?')} streams, MB (10⁶ B)", "< 100 MB", rss_mb,
             lambda v: v < 100),
        goal("req/s through two control-fed sidecars during swaps", "≥ 2,000", sw_rps, lambda v: v >= 2000, 0),
        goal("non-2xx + socket errors during swaps", "0", sw_err, lambda v: v == 0, 0),
        "",
        "### Commands",
        "",
        "```sh",
        f"{setup.get('ca_cmd', '')}",
        f"{setup.get('token_cmd', '')}     # and the same with …/sa/backend for sidecar B",
        f"{setup.get('control_cmd', '')}",
        f"{setup.get('load_cmd', '')}",
        f"{setup.get('many_cmd', '')}",
    ]
    if swaps.get("cmd_a"):
        out += [f"{swaps['cmd_b']}", f"{swaps['cmd_a']}", f"{swaps.get('wrk_cmd')}"]
    out += [
        "```",
        "",
        "Configs: mesh `bench/control-mesh.yaml.tmpl`, sidecars `bench/spoke-control-{a,b}.yaml.tmpl`; "
        f"rendered files and raw outputs in `bench/{meta.get('run_dir', 'out/runs/...')}/`.",
        "",
    ]
    out += foreign_notes([dict(r, kind="idle") if r.get("kind") in ("push", "swaps") else r for r in records], meta)
    return out


# === scale ===


def scale_section(records: list[dict], meta: dict) -> list[str]:
    run = next((r for r in records if r.get("kind") == "run"), {})
    res = run.get("result") or {}
    ack = res.get("ack_ms") or {}
    side = res.get("sidecar_apply_ms") or {}
    out = [
        "## Control plane at scale (`bench/run.sh scale`)",
        "",
        f"Run {meta.get('date', '?')}. `spoke control` with a generated mesh of {run.get('services', '?')} "
        f"Services x {run.get('endpoints', '?')} endpoints, a host route and a VIP each "
        f"({fmt(mib(run.get('mesh_bytes', 0) / 1024 if run.get('mesh_bytes') else None))} MiB of YAML; "
        "Service 0 in a file of its own), "
        f"{res.get('clients', '?')} incremental discovery streams from `target/release/examples/control_scale` "
        "(each its own TLS connection, ACKing every push) and one real `spoke proxy` sidecar "
        "(`TOKIO_WORKER_THREADS=1`) fed by the same control plane. One endpoint of Service 0 flaps "
        f"(removed, added back) {res.get('hz', '?')} times a second, {res.get('changes', '?')} changes in all. "
        "Change-to-ACK: from the rename of the file to each stream sending its ACK; the sidecar's "
        "from the rename to its admin `/server_info` showing the new version (polled every 2 ms). "
        "CPU per change: the control plane's utime+stime over the flapping (file watch, parse, "
        "publish, 101 pushes and ACKs) divided by the changes. Everything shares 2 cores with "
        "the load client and other work on the machine, so the numbers are noisy.",
        "",
        "| measure | target | result |",
        "|---|---|---|",
    ]

    def row(label, target, value, ok, digits=1):
        mark = "" if value is None or not target else (" ✓" if ok(value) else " ✗")
        out.append(f"| {label} | {target} | {fmt(value, digits)}{mark} |")

    row("change-to-ACK p50, ms (all streams)", "", ack.get("p50"), lambda v: True)
    row("change-to-ACK p99, ms (all streams)", "≤ 100", ack.get("p99"), lambda v: v <= 100)
    row("change-to-ACK max, ms", "", ack.get("max"), lambda v: True)
    row("sidecar change-to-apply p50, ms", "", side.get("p50"), lambda v: True)
    row("sidecar change-to-apply p99, ms", "≤ 100", side.get("p99"), lambda v: v <= 100)
    row("control plane CPU per change, ms", "≤ 10", res.get("control_cpu_ms_per_change"), lambda v: v <= 10)
    row("bytes per stream per change", "≤ 10,240", res.get("bytes_per_client_per_change"), lambda v: v <= 10240, 0)
    row("bytes of the first (full) push per stream", "", res.get("initial_bytes_per_client"), lambda v: True, 0)
    row("control plane RSS idle (1 sidecar), MiB", "", mib(run.get("control_idle_rss_kib")), lambda v: True)
    row("control plane RSS after the flapping, MiB", "", mib(res.get("control_rss_kib")), lambda v: True)
    row("sidecar RSS before the flapping, MiB", "≤ 20", mib(res.get("sidecar_rss_kib_start")), lambda v: v <= 20)
    row("sidecar RSS after the flapping, MiB", "≤ 20, flat", mib(res.get("sidecar_rss_kib_end")), lambda v: v <= 20)
    row("changes a stream missed", "0", res.get("missed"), lambda v: v == 0, 0)
    if res.get("error"):
        out.append(f"\nThe load client failed: {res['error']}")
    out += [
        "",
        f"Control plane counters at the end: {run.get('pushes_total')} pushes, "
        f"{run.get('push_bytes_total')} bytes, {run.get('resources_sent_total')} resources.",
        "",
        "```",
        f"{run.get('control_cmd', '')}",
        f"{run.get('sidecar_cmd', '')}",
        f"{run.get('load_cmd', '')}",
        "```",
        "",
    ]
    out += foreign_notes([dict(r, kind="idle") if r.get("kind") == "run" else r for r in records], meta)
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
        + f" (`{meta.get('spoke_bin', '?')}`"
        + (f", built {meta['spoke_built']}" if meta.get("spoke_built") else "") + ")"
        + (f" — **{meta['spoke_stale']}**" if meta.get("spoke_stale") else "") + " |",
        f"| envoy | `{meta.get('envoy_version', '?')}` (PyPI `{meta.get('envoy_spec', '?')}`) |",
        f"| haproxy | {meta.get('haproxy_version', '?')} |",
        f"| iperf3 | {meta.get('iperf3_version', '?')} |",
        "",
    ]


def previous_sections(path: Path) -> dict[str, list[str]]:
    """The sections of an existing RESULTS.md, by scenario (`bench/run.sh NAME` in the heading)."""
    if not path.exists():
        return {}
    out: dict[str, list[str]] = {}
    current = None
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            m = re.search(r"`bench/run\.sh (\w+)`", line)
            current = m.group(1) if m else None
            if current:
                out[current] = [line]
                continue
        if current:
            out[current].append(line)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--results", type=Path, required=True)
    args = ap.parse_args()

    sections: list[str] = []
    newest: dict = {}
    kept = previous_sections(args.results)
    for scenario in SCENARIO_ORDER:
        run_dir = args.out / f"latest-{scenario}"
        if not run_dir.exists():
            # Not run on this machine: keep what the committed file says about it.
            if scenario in kept:
                sections += kept[scenario]
            continue
        meta = json.loads((run_dir / "meta.json").read_text())
        if meta.get("date", "") >= newest.get("date", ""):
            newest = meta
        records = load_jsonl(run_dir / f"{scenario}.jsonl")
        if scenario == "tcp":
            sections += tcp_section(records, meta)
        elif scenario == "mtls":
            sections += mtls_section(records, meta)
        elif scenario == "http":
            sections += http_section(records, meta)
        elif scenario == "onehop":
            sections += onehop_section(records, meta)
        elif scenario == "authz":
            sections += authz_section(records, meta)
        elif scenario == "routes":
            sections += routes_section(records, meta)
        elif scenario == "defaults":
            sections += defaults_section(records, meta)
        elif scenario == "tracing":
            sections += tracing_section(records, meta)
        elif scenario == "lb":
            sections += lb_section(records, meta)
        elif scenario == "control":
            sections += control_section(records, meta)
        elif scenario == "scale":
            sections += scale_section(records, meta)
        elif scenario == "startup":
            sections += startup_section(records, meta)
    args.results.write_text("\n".join(header(newest) + sections).rstrip() + "\n")


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Memory after a load burst: the two-hop HTTP chain of bench/profile.sh (Spoke A -> HTTP/2
# over mTLS -> Spoke B -> h2o, one worker each, 127.0.0.1 only) idle, then a wrk burst over
# BURST_CONNS keep-alive connections for BURST_SECONDS, then BURST_SETTLE seconds of quiet, twice.
# Prints VmRSS and RssAnon of A and B (KiB) at each step: the performance issue asks that RSS
# return to within 20% of idle after a burst ends. Every process started here is stopped by
# its PID.
#
# usage: bench/burst-rss.sh        env: SPOKE_BIN [target/release/spoke], BURST_CONNS [1000],
#                                       BURST_SECONDS [5], BURST_SETTLE [5], BURST_BASE [19420]
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
SPOKE_BIN=${SPOKE_BIN:-$ROOT/target/release/spoke}
CONNS=${BURST_CONNS:-1000}
BURST_SECONDS=${BURST_SECONDS:-5}
SETTLE=${BURST_SETTLE:-5}
BASE=${BURST_BASE:-19420}
WORK=$(mktemp -d)
PIDS=()

die() { echo "burst-rss.sh: $*" >&2; exit 1; }
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

[[ -x $SPOKE_BIN ]] || die "$SPOKE_BIN not found (cargo build --release)"
for t in h2o wrk; do command -v "$t" >/dev/null || die "$t not installed"; done
A_LISTEN=$((BASE + 1)) A_ADMIN=$((BASE + 2)) A_READY=$((BASE + 3))
B_LISTEN=$((BASE + 11)) B_ADMIN=$((BASE + 12)) B_READY=$((BASE + 13))
UP=$((BASE + 15))

# Certificates from spoke ca, as in the benchmark.
"$SPOKE_BIN" ca init --out "$WORK/certs/ca" --force >/dev/null
for id in web backend; do
    "$SPOKE_BIN" ca issue --ca "$WORK/certs/ca" --id "spiffe://cluster.local/ns/default/sa/$id" \
        --out "$WORK/certs/$id" --force >/dev/null
done
mkdir -p "$WORK/www" && printf 'ok\n' >"$WORK/www/index.html"
sed -e "s|@UPSTREAM_PORT@|$UP|g" -e "s|@WWW@|$WORK/www|g" "$BENCH/h2o-upstream.conf.tmpl" >"$WORK/h2o.conf"
sed -e "s|@ADMIN_PORT@|$A_ADMIN|g" -e "s|@READY_PORT@|$A_READY|g" -e "s|@CERTS@|$WORK/certs|g" \
    -e "s|@LISTEN@|$A_LISTEN|g" -e "s|@B_LISTEN@|$B_LISTEN|g" -e "s|@LB@|least_request|g" \
    "$BENCH/spoke-http-a.yaml.tmpl" >"$WORK/a.yaml"
sed -e "s|@ADMIN_PORT@|$B_ADMIN|g" -e "s|@READY_PORT@|$B_READY|g" -e "s|@CERTS@|$WORK/certs|g" \
    -e "s|@LISTEN@|$B_LISTEN|g" -e "s|@UPSTREAM_PORT@|$UP|g" \
    "$BENCH/spoke-http-b.yaml.tmpl" >"$WORK/b.yaml"
h2o -c "$WORK/h2o.conf" >"$WORK/h2o.log" 2>&1 &
PIDS+=($!)
TOKIO_WORKER_THREADS=1 "$SPOKE_BIN" proxy -c "$WORK/b.yaml" --log-level warn 2>"$WORK/b.log" &
B=$!
PIDS+=("$B")
TOKIO_WORKER_THREADS=1 "$SPOKE_BIN" proxy -c "$WORK/a.yaml" --log-level warn 2>"$WORK/a.log" &
A=$!
PIDS+=("$A")
for _ in $(seq 100); do
    curl -fs -o /dev/null "http://127.0.0.1:$A_LISTEN/" && break
    sleep 0.1
done
curl -fs -o /dev/null "http://127.0.0.1:$A_LISTEN/" || die "chain not up: $(tail -3 "$WORK/a.log" "$WORK/b.log")"

rss() {
    local r
    for r in A B; do
        local pid=$A
        [[ $r == B ]] && pid=$B
        printf '%s %s ' "$r" "$(awk '/^(VmRSS|RssAnon)/{printf "%s %s ", $1, $2}' "/proc/$pid/status")"
    done
}
sleep 1
echo "idle:                 $(rss)"
for round in 1 2; do
    wrk -t1 -c"$CONNS" -d"${BURST_SECONDS}s" "http://127.0.0.1:$A_LISTEN/" | grep -E "Requests/sec|Socket errors" || true
    echo "burst $round ended:        $(rss)"
    sleep "$SETTLE"
    echo "burst $round + ${SETTLE}s quiet:  $(rss)"
done

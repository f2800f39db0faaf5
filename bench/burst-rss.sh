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
# shellcheck source=bench/two-hop.sh
source "$BENCH/two-hop.sh"
for t in h2o wrk; do command -v "$t" >/dev/null || die "$t not installed"; done
MODE=off
start_chain

rss() {
    local r
    for r in A B; do
        local pid=$A
        [[ $r == B ]] && pid=$B
        printf '%s %s ' "$r" "$(awk '/^(VmRSS|RssAnon)/{printf "%s %s ", $1, $2}' "/proc/$pid/status")"
    done
}
sleep 3 # past the first quiet tick: the start-up trim (src/rest.rs) has run
echo "idle:                 $(rss)"
for round in 1 2; do
    wrk -t1 -c"$CONNS" -d"${BURST_SECONDS}s" "http://127.0.0.1:$A_LISTEN/" | grep -E "Requests/sec|Socket errors" || true
    echo "burst $round ended:        $(rss)"
    sleep "$SETTLE"
    echo "burst $round + ${SETTLE}s quiet:  $(rss)"
done

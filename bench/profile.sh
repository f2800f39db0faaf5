#!/usr/bin/env bash
# Flame graphs of the two-hop HTTP chain, one per proxy: client (wrk, HTTP/1.1 keep-alive, or
# h2load) -> Spoke A (outbound, plaintext listener) -> HTTP/2 over mTLS -> Spoke B (inbound)
# -> h2o upstream, all on 127.0.0.1. perf samples A and B (cpu-clock, DWARF call graphs) while
# the load runs; inferno folds the stacks and draws bench/profiles/LABEL-a.svg and -b.svg
# (frames under 0.2% of samples are left out to keep the files small). The load is bounded
# (PROFILE_SECONDS) and every process started here is stopped by its PID.
#
# usage: bench/profile.sh LABEL [off|access|trace1]
#   LABEL    file name prefix under bench/profiles/ (e.g. access-before)
#   mode     off (default): no access log, no tracing; access: access_log: true;
#            trace1: tracing with sampling 1 to bench/out/otlp-sink
# env:
#   SPOKE_BIN          binary to profile [target/release/spoke]
#   PROFILE_LOAD       wrk | h2load [wrk]
#   PROFILE_SECONDS    seconds of perf sampling [8]
#   PROFILE_BASE       first port of a block of 20 on 127.0.0.1 [19400]
#   PROFILE_FOLDED     directory to keep the folded stacks in (LABEL-a.folded, -b), e.g. to
#                      sum one module's samples per request; not kept by default
# needs: perf (Debian linux-perf), wrk or h2load, h2o; inferno is installed into
# bench/.tools with cargo if it is not on PATH.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
LABEL=${1:?usage: bench/profile.sh LABEL [off|access|trace1]}
MODE=${2:-off}
SPOKE_BIN=${SPOKE_BIN:-$ROOT/target/release/spoke}
LOAD=${PROFILE_LOAD:-wrk}
SECONDS_=${PROFILE_SECONDS:-8}
BASE=${PROFILE_BASE:-19400}
OUTDIR=$BENCH/profiles
# shellcheck source=bench/two-hop.sh
source "$BENCH/two-hop.sh"
for t in perf h2o "$LOAD"; do command -v "$t" >/dev/null || die "$t not installed"; done
case $MODE in off | access | trace1) ;; *) die "unknown mode $MODE" ;; esac
export PATH=$BENCH/.tools/bin:$PATH
if ! command -v inferno-flamegraph >/dev/null; then
    cargo install inferno --locked --root "$BENCH/.tools" >&2 || die "cannot install inferno"
fi

start_chain

if [[ $LOAD == wrk ]]; then
    wrk -t1 -c64 -d$((SECONDS_ + 3))s "http://127.0.0.1:$A_LISTEN/" >"$WORK/load.txt" &
else
    h2load -c4 -m100 -D $((SECONDS_ + 3)) "http://127.0.0.1:$A_LISTEN/" >"$WORK/load.txt" &
fi
L=$!
PIDS+=("$L")
sleep 1
mkdir -p "$OUTDIR"
for r in a b; do
    pid=$A
    [[ $r == b ]] && pid=$B
    perf record -e cpu-clock -F 999 --call-graph dwarf,16384 -p "$pid" -o "$WORK/$r.data" \
        -- sleep "$SECONDS_" >/dev/null 2>&1 &
    PIDS+=($!)
done
wait "$L" || true
sleep 0.5
for r in a b; do
    side="A (outbound)"
    [[ $r == b ]] && side="B (inbound)"
    perf script -i "$WORK/$r.data" 2>/dev/null | inferno-collapse-perf >"$WORK/$r.folded"
    inferno-flamegraph --minwidth 0.2 --title "spoke $side, two-hop HTTP ($MODE, $LOAD): $LABEL" \
        <"$WORK/$r.folded" >"$OUTDIR/$LABEL-$r.svg"
    if [[ -n ${PROFILE_FOLDED:-} ]]; then
        mkdir -p "$PROFILE_FOLDED" && cp "$WORK/$r.folded" "$PROFILE_FOLDED/$LABEL-$r.folded"
    fi
done
grep -E "Requests/sec|finished in" "$WORK/load.txt" || true
echo "wrote $OUTDIR/$LABEL-{a,b}.svg"

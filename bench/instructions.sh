#!/usr/bin/env bash
# Instructions per request of each proxy of the two-hop HTTP chain (Spoke A -> HTTP/2 over
# mTLS -> Spoke B -> h2o, 127.0.0.1 only), counted by valgrind's callgrind: a measure that
# does not move with what else runs on the machine, for comparing two builds (or two modes)
# of a change too small to see through the noise of req/s on two shared cores. Each binary
# gets its own chain under callgrind; after a warm-up the counters are zeroed, a fixed
# number of requests is sent, and the counters are dumped. callgrind counts instructions,
# not time: a cache miss or a system call costs nothing here, and `rep movs`/`rep stos`
# copies count per iteration, so use it beside perf, not instead of it.
#
# usage: bench/instructions.sh [BIN ...]       (default: target/release/spoke)
# env:   INSTR_REQUESTS   requests counted [20000]
#        INSTR_LOAD       h2 (h2load, 4 connections x 10 streams) | h1 (h2load --h1, 16
#                         connections) [h2]
#        MODE             off | access | trace1, as bench/profile.sh [off]
#        INSTR_BASE       first port of the blocks of 20 used on 127.0.0.1 [19600]
#        INSTR_OUT        directory kept with the callgrind files (callgrind_annotate them)
#                         [a temporary one, removed]
# prints: one line per binary: instructions per request of A and of B.
# needs: valgrind, h2load, h2o; a release build.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
N=${INSTR_REQUESTS:-20000}
LOAD=${INSTR_LOAD:-h2}
MODE=${MODE:-off}
BASE0=${INSTR_BASE:-19600}
BINS=("$@")
[[ ${#BINS[@]} -gt 0 ]] || BINS=("$ROOT/target/release/spoke")
SPOKE_BIN=${BINS[0]}
# shellcheck source=bench/two-hop.sh
source "$BENCH/two-hop.sh"
for t in valgrind callgrind_control h2load h2o; do command -v "$t" >/dev/null || die "$t not installed"; done
case $LOAD in h1 | h2) ;; *) die "INSTR_LOAD is h1 or h2" ;; esac
OUT=${INSTR_OUT:-$WORK/cg}
mkdir -p "$OUT"

load() {
    if [[ $LOAD == h2 ]]; then
        h2load -n "$1" -c4 -m10 "http://127.0.0.1:$2/" >/dev/null
    else
        h2load --h1 -n "$1" -c16 "http://127.0.0.1:$2/" >/dev/null
    fi
}
# The instructions since the counters were zeroed: the summary of the first dump
# (callgrind names it <file>.1; the file without a suffix is written at exit).
count() {
    awk '/^summary:/{print $2; exit}' "$OUT/$1.$2.1"
}

i=0
for bin in "${BINS[@]}"; do
    [[ -x $bin ]] || die "$bin not found"
    SPOKE_BIN=$bin
    BASE=$((BASE0 + 20 * i))
    SPOKE_WRAP="valgrind --tool=callgrind --dump-line=no --callgrind-out-file=$OUT/$i.%p"
    start_chain
    load 2000 "$A_LISTEN"
    sleep 1
    for p in "$A" "$B"; do callgrind_control -z "$p" >/dev/null; done
    load "$N" "$A_LISTEN"
    # Spans and access lines of the last requests are written within 100 ms.
    sleep 1
    for p in "$A" "$B"; do callgrind_control -d counted "$p" >/dev/null; done
    echo "$bin ($LOAD, MODE=$MODE): instructions per request A $(($(count "$i" "$A") / N)), B $(($(count "$i" "$B") / N))"
    i=$((i + 1))
done

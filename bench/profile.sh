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
WORK=$(mktemp -d)
PIDS=()

die() { echo "profile.sh: $*" >&2; exit 1; }
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

[[ -x $SPOKE_BIN ]] || die "$SPOKE_BIN not found (cargo build --release)"
for t in perf h2o "$LOAD"; do command -v "$t" >/dev/null || die "$t not installed"; done
case $MODE in off | access | trace1) ;; *) die "unknown mode $MODE" ;; esac
export PATH=$BENCH/.tools/bin:$PATH
if ! command -v inferno-flamegraph >/dev/null; then
    cargo install inferno --locked --root "$BENCH/.tools" >&2 || die "cannot install inferno"
fi

A_LISTEN=$((BASE + 1)) A_ADMIN=$((BASE + 2)) A_READY=$((BASE + 3))
B_LISTEN=$((BASE + 11)) B_ADMIN=$((BASE + 12)) B_READY=$((BASE + 13))
UP=$((BASE + 15)) SINK=$((BASE + 16))

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
case $MODE in
access) for r in a b; do echo "access_log: true" >>"$WORK/$r.yaml"; done ;;
trace1)
    [[ -x $BENCH/out/otlp-sink ]] || gcc -O2 -o "$BENCH/out/otlp-sink" "$BENCH/otlp-sink.c"
    "$BENCH/out/otlp-sink" "$SINK" >/dev/null 2>&1 &
    PIDS+=($!)
    for r in a b; do
        echo "tracing: { sampling: 1, collector: { address: \"127.0.0.1:$SINK\", protocol: http } }" >>"$WORK/$r.yaml"
    done
    ;;
esac

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
done
grep -E "Requests/sec|finished in" "$WORK/load.txt" || true
echo "wrote $OUTDIR/$LABEL-{a,b}.svg"

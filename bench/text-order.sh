#!/usr/bin/env bash
# Regenerates link/text-order.txt, the order the linker lays out the spoke binary's code in
# (see link/README.md): every function a sidecar runs, recorded with valgrind's callgrind
# while the release binary starts, serves the two-hop chain of bench/two-hop.sh (HTTP/1.1
# and HTTP/2 clients, mTLS and HTTP/2 between the hops, h2o behind), two TCP hops over mTLS
# and a plain TCP listener, and follows a control plane (certificate, discovery stream, a
# few pushes) that runs under callgrind too. Each proxy's run is cut into three phases with
# callgrind_control dumps: start-up (until ready), load (the traffic or pushes), quiet (a few
# idle seconds) and exit; the list puts the functions of the quiet phase first, then the
# load's, then those of start-up and exit alone (bench/text-order.py), so that what an idle
# sidecar runs sits together and start-up code, released once the proxy turns quiet, apart.
# 127.0.0.1 only; every load is bounded. Takes a few minutes.
#
#   bench/text-order.sh        (needs valgrind, h2o, wrk, h2load; a release build)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
SPOKE_BIN=${SPOKE_BIN:-$ROOT/target/release/spoke}
SCALE_BIN=${CONTROL_SCALE_BIN:-$ROOT/target/release/examples/control_scale}
BASE=${BASE:-19300}
MODE=off
# shellcheck source=bench/two-hop.sh
source "$BENCH/two-hop.sh"
for t in valgrind h2o wrk h2load; do command -v "$t" >/dev/null || die "$t not found"; done
[[ -x $SCALE_BIN ]] || die "$SCALE_BIN not found (cargo build --release --example control_scale)"

SPOKE_WRAP="valgrind --tool=callgrind --demangle=no --dump-line=no --callgrind-out-file=$WORK/cg.%p"
phase() { # NAME PID... : callgrind dumps (and zeroes) each process's counts so far
    local name=$1 p
    shift
    for p in "$@"; do callgrind_control -d "$name" "$p" >/dev/null; done
}
stop() { # PID... : SIGTERM (the proxy drains and exits, callgrind writes its file), wait
    local p
    for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "$@"; do
        for _ in $(seq 600); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    done
}

echo "two-hop chain under callgrind (slow start-up is expected)"
start_chain
phase startup "$A" "$B"
wrk -t1 -c4 -d5s "http://127.0.0.1:$A_LISTEN/" >/dev/null
h2load -n 300 -c 2 -m 10 "http://127.0.0.1:$A_LISTEN/" >/dev/null
curl -fs -o /dev/null "http://127.0.0.1:$A_ADMIN/clusters"
curl -fs -o /dev/null "http://127.0.0.1:$A_READY/metrics"
phase load "$A" "$B"
sleep 6
phase quiet "$A" "$B"
stop "$A" "$B"

echo "two TCP hops over mTLS (and a plain TCP listener) under callgrind"
T_A=$((BASE + 4)) T_B=$((BASE + 5)) T_PLAIN=$((BASE + 6))
C="$WORK/certs"
printf '%s\n' "admin: { address: 127.0.0.1:$((BASE + 7)) }" "stats: { address: 127.0.0.1:$((BASE + 8)) }" \
    "tls: { cert: $C/web/cert.pem, key: $C/web/key.pem, roots: $C/web/root.pem }" \
    "listeners:" \
    "  - { name: out, address: 127.0.0.1:$T_A, protocol: tcp, cluster: backend }" \
    "  - { name: plain, address: 127.0.0.1:$T_PLAIN, protocol: tcp, cluster: app }" \
    "clusters:" \
    "  - { name: backend, tls: { identity: \"spiffe://cluster.local/ns/default/sa/backend\" }, endpoints: [ { address: \"127.0.0.1:$T_B\" } ] }" \
    "  - { name: app, endpoints: [ { address: \"127.0.0.1:$UP\" } ] }" >"$WORK/ta.yaml"
printf '%s\n' "admin: { address: 127.0.0.1:$((BASE + 9)) }" "stats: { address: 127.0.0.1:$((BASE + 10)) }" \
    "tls: { cert: $C/backend/cert.pem, key: $C/backend/key.pem, roots: $C/backend/root.pem }" \
    "listeners: [ { name: in, address: 127.0.0.1:$T_B, protocol: tcp, direction: inbound, forward: \"127.0.0.1:$UP\" } ]" \
    "inbound: [ { port: $UP, tls: strict, allow: [ \"spiffe://cluster.local/ns/default/sa/web\" ] } ]" >"$WORK/tb.yaml"
# shellcheck disable=SC2086
$SPOKE_WRAP "$SPOKE_BIN" proxy -c "$WORK/tb.yaml" --log-level warn 2>"$WORK/tb.log" &
TB=$!
PIDS+=("$TB")
# shellcheck disable=SC2086
$SPOKE_WRAP "$SPOKE_BIN" proxy -c "$WORK/ta.yaml" --log-level warn 2>"$WORK/ta.log" &
TA=$!
PIDS+=("$TA")
for _ in $(seq 600); do curl -fs -o /dev/null "http://127.0.0.1:$T_A/" && break; sleep 0.1; done
curl -fs -o /dev/null "http://127.0.0.1:$T_A/" || die "TCP chain not up: $(tail -3 "$WORK/ta.log" "$WORK/tb.log")"
phase startup "$TA" "$TB"
wrk -t1 -c4 -d3s "http://127.0.0.1:$T_A/" >/dev/null
wrk -t1 -c4 -d3s "http://127.0.0.1:$T_PLAIN/" >/dev/null
phase load "$TA" "$TB"
sleep 6
phase quiet "$TA" "$TB"
stop "$TA" "$TB"

echo "a sidecar fed by spoke control, both under callgrind"
CTL=$((BASE + 17)) S_ADMIN=$((BASE + 18)) S_READY=$((BASE + 19)) S_OUT=$((BASE + 14)) CTL_STATS=$BASE
web=spiffe://cluster.local/ns/default/sa/web
mkdir -p "$WORK/mesh"
"$SPOKE_BIN" ca init --out "$WORK/ctl-ca" --force >/dev/null
"$SPOKE_BIN" control token --ca "$WORK/ctl-ca" --id "$web" --ttl 1h >"$WORK/web.token"
"$SCALE_BIN" gen "$WORK/mesh" 20 3
# shellcheck disable=SC2086
$SPOKE_WRAP "$SPOKE_BIN" control --config-dir "$WORK/mesh" --ca "$WORK/ctl-ca" \
    --listen "127.0.0.1:$CTL" --stats "127.0.0.1:$CTL_STATS" --log-level warn 2>"$WORK/control.log" &
C=$!
PIDS+=("$C")
printf '%s\n' "node: { id: web-0, identity: \"$web\" }" \
    "admin: { address: 127.0.0.1:$S_ADMIN }" "stats: { address: 127.0.0.1:$S_READY }" \
    "control: { address: \"127.0.0.1:$CTL\", token_file: $WORK/web.token, roots: $WORK/ctl-ca/root.pem }" \
    "listeners: [ { name: out, address: 127.0.0.1:$S_OUT, protocol: http, cluster: svc-1 } ]" >"$WORK/sidecar.yaml"
# shellcheck disable=SC2086
TOKIO_WORKER_THREADS=1 $SPOKE_WRAP "$SPOKE_BIN" proxy -c "$WORK/sidecar.yaml" --log-level warn 2>"$WORK/sidecar.log" &
S=$!
PIDS+=("$S")
for _ in $(seq 600); do curl -fs -o /dev/null "http://127.0.0.1:$S_READY/ready" && break; sleep 0.1; done
curl -fs -o /dev/null "http://127.0.0.1:$S_READY/ready" || die "sidecar not ready: $(tail -3 "$WORK/sidecar.log")"
phase startup "$S" "$C"
flap=$WORK/mesh/10-flap.yaml
cp "$flap" "$WORK/flap.orig"
for i in 1 2 3 4; do
    if ((i % 2)); then sed 's/:8080"/:8081"/' "$WORK/flap.orig" >"$flap"; else cp "$WORK/flap.orig" "$flap"; fi
    sleep 2
done
phase load "$S" "$C"
sleep 6
phase quiet "$S" "$C"
stop "$S" "$C"

mkdir -p "$ROOT/link"
python3 "$BENCH/text-order.py" "$SPOKE_BIN" "$WORK"/cg.* >"$ROOT/link/text-order.txt"
echo "link/text-order.txt: $(wc -l <"$ROOT/link/text-order.txt") functions"

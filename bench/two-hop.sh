# Sourced by bench/profile.sh and bench/burst-rss.sh: the two-hop HTTP chain on 127.0.0.1 --
# Spoke A (outbound, plaintext listener) -> HTTP/2 over mTLS -> Spoke B (inbound) -> h2o,
# one worker each, certificates from spoke ca. Expects ROOT, BENCH, SPOKE_BIN, BASE (a block
# of 20 ports) and, for start_chain, MODE (off | access | trace1); SPOKE_WRAP, if set, is a
# command the two proxies run under (text-order.sh: valgrind). Sourcing it makes the
# scratch directory WORK and the PIDS list that the exit trap stops (by PID) and removes.
# start_chain sets A, B (PIDs) and A_LISTEN.

WORK=$(mktemp -d)
PIDS=()

die() { echo "$(basename "$0"): $*" >&2; exit 1; }
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

[[ -x $SPOKE_BIN ]] || die "$SPOKE_BIN not found (cargo build --release)"

start_chain() {
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
    # shellcheck disable=SC2086 # SPOKE_WRAP is a command line
    TOKIO_WORKER_THREADS=1 ${SPOKE_WRAP:-} "$SPOKE_BIN" proxy -c "$WORK/b.yaml" --log-level warn 2>"$WORK/b.log" &
    B=$!
    PIDS+=("$B")
    # shellcheck disable=SC2086
    TOKIO_WORKER_THREADS=1 ${SPOKE_WRAP:-} "$SPOKE_BIN" proxy -c "$WORK/a.yaml" --log-level warn 2>"$WORK/a.log" &
    A=$!
    PIDS+=("$A")
    for _ in $(seq 600); do
        curl -fs -o /dev/null "http://127.0.0.1:$A_LISTEN/" && break
        sleep 0.1
    done
    curl -fs -o /dev/null "http://127.0.0.1:$A_LISTEN/" || die "chain not up: $(tail -3 "$WORK/a.log" "$WORK/b.log")"
}

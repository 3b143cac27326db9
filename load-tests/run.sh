#!/usr/bin/env bash
# Load test: the gateway against its baselines, all in one run. See load-tests/README.md.
#
#   load-tests/run.sh                      # everything, 10 s per run
#   DURATION=3s TARGETS="nginx passthrough" load-tests/run.sh
#
# Environment (defaults in brackets):
#   DURATION     wrk duration per run [10s]          WARMUP       per target and mode, unrecorded [2s]
#   CONCURRENCY  connections per run ["1 10 100"]    MODES        "json sse anthropic" [all]
#   TARGETS      "nginx passthrough gateway metered" [all; metered = the gateway with a key
#                that has request, token and cost limits]
#   THREADS      passthrough worker threads [1]
#   TARGET_CPU   CPU the servers are pinned to [1]   LOAD_CPU     CPU wrk is pinned to [0]
#   SKIP_BUILD=1 use the binaries already built      KEEP_RUNDIR=1 keep logs and raw wrk output
#
# Exit status: 0 when every requested target was measured, 2 when one was not answering (the
# table is still written, with the reason), 1 on a setup error.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LT="$ROOT/load-tests"
cd "$ROOT"

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONCURRENCY=${CONCURRENCY:-"1 10 100"}
MODES=${MODES:-"json sse anthropic"}
TARGETS=${TARGETS:-"nginx passthrough gateway metered"}
THREADS=${THREADS:-1}
TARGET_CPU=${TARGET_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}

# Fixed by load-tests/nginx.conf and load-tests/gateway.toml.
NGINX_ADDR=127.0.0.1:18081
PASSTHROUGH_ADDR=127.0.0.1:18082
GATEWAY_ADDR=$(sed -n 's/^listen *= *"\(.*\)"/\1/p' "$LT/gateway.toml" | head -1)
GATEWAY_ADMIN=$(sed -n 's/^admin_listen *= *"\(.*\)"/\1/p' "$LT/gateway.toml" | head -1)
KEY=pc-load-test-key
METERED_KEY=pc-load-metered-key

BODY_JSON='{"model":"bench:gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}]}'
BODY_SSE='{"model":"benchsse:gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}],"stream":true}'
# anthropic mode: nginx and the passthrough relay Anthropic's own stream untouched; the gateway
# translates it to OpenAI chunks (the cost of translation is (c) here minus (c) in sse mode).
BODY_ANTHROPIC='{"model":"benchanthropic:claude-sonnet-4-5","messages":[{"role":"user","content":"Say hello"}],"stream":true}'

die() { echo "run.sh: $*" >&2; exit 1; }
log() { echo "==> $*" >&2; }

for t in $TARGETS; do
    [[ $t =~ ^(nginx|passthrough|gateway|metered)$ ]] || die "unknown target '$t' (nginx, passthrough, gateway, metered)"
done
for m in $MODES; do
    [[ $m =~ ^(json|sse|anthropic)$ ]] || die "unknown mode '$m' (json, sse, anthropic)"
done

for tool in wrk nginx taskset python3 curl cargo; do
    command -v "$tool" >/dev/null || die "$tool is not installed (needed by the load test)"
done
NCPU=$(nproc)
if ((NCPU < 2)); then
    die "needs at least 2 CPUs to keep wrk and the servers apart (found $NCPU)"
fi
((TARGET_CPU < NCPU && LOAD_CPU < NCPU)) || die "TARGET_CPU/LOAD_CPU must be < $NCPU"
CLK_TCK=$(getconf CLK_TCK)

mkdir -p "$LT/out"
RUN=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-load.XXXXXX")
chmod 755 "$RUN" # nginx may drop to an unprivileged worker user when started as root
RESULTS="$RUN/results.jsonl"
: >"$RESULTS"

PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -INT "$pid" 2>/dev/null || true # Pingora: fast shutdown; nginx: fast shutdown
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [[ ${KEEP_RUNDIR:-0} == 1 ]]; then
        echo "run.sh: logs and raw wrk output kept in $RUN" >&2
    else
        rm -rf "$RUN"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------- build
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
GATEWAY_BUILD_ERR=""
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    log "cargo build --release --example passthrough"
    cargo build --release --example passthrough || die "the passthrough baseline does not build"
    if [[ " $TARGETS " == *" gateway "* || " $TARGETS " == *" metered "* ]]; then
        log "cargo build --release --bin portcullis"
        if ! cargo build --release --bin portcullis 2>"$RUN/gateway-build.log"; then
            tail -20 "$RUN/gateway-build.log" >&2
            GATEWAY_BUILD_ERR="target/release/portcullis does not build (cargo build --release --bin portcullis)"
        fi
    fi
fi
PASSTHROUGH_BIN="$TARGET_DIR/release/examples/passthrough"
GATEWAY_BIN="$TARGET_DIR/release/portcullis"
[[ -x $PASSTHROUGH_BIN ]] || die "$PASSTHROUGH_BIN is missing; run without SKIP_BUILD"

# -------------------------------------------------------------------------------------- helpers
port_open() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }

# wait_port ADDR PID: until ADDR accepts connections, or PID exits, or 10 s pass.
wait_port() {
    for _ in $(seq 100); do
        port_open "$1" && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# cpu_ticks PID: utime + stime of the whole process (all threads), in clock ticks.
cpu_ticks() {
    local stat rest
    read -r stat <"/proc/$1/stat"
    rest=${stat##*) } # the command name may contain spaces; fields resume after ')'
    # shellcheck disable=SC2086
    set -- $rest
    echo $((${12} + ${13}))
}

# hwm_kb PID: peak resident set size since the last reset_hwm.
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
# Linux resets VmHWM to the current RSS on "5" (since 4.0); without it the figure is the peak
# since start, which only makes later runs look bigger, never smaller.
reset_hwm() { echo 5 >"/proc/$1/clear_refs" 2>/dev/null || true; }

# probe NAME URL BODY AUTH MODE: one request with curl; prints why it is not usable, or nothing.
probe() {
    local name=$1 url=$2 body=$3 auth=$4 mode=$5 code
    local -a hdr=(-H "Content-Type: application/json")
    [[ -n $auth ]] && hdr+=(-H "Authorization: Bearer $auth")
    code=$(curl -sS -m 10 -o "$RUN/probe-$name-$mode.out" -w '%{http_code}' "${hdr[@]}" --data-binary "$body" "$url" 2>&1) || true
    if [[ $code != 200 ]]; then
        echo "$name answered HTTP $code to POST $url: $(head -c 300 "$RUN/probe-$name-$mode.out" 2>/dev/null | tr '\n' ' ')"
    elif [[ $mode == sse || ($mode == anthropic && $name == gateway) ]] && ! grep -q '^data: \[DONE\]' "$RUN/probe-$name-$mode.out"; then
        echo "$name answered 200 to the streaming request but the body has no 'data: [DONE]'"
    elif [[ $mode == anthropic && $name != gateway ]] && ! grep -q '^event: message_stop' "$RUN/probe-$name-$mode.out"; then
        echo "$name answered 200 to the Anthropic stream request but the body has no 'event: message_stop'"
    fi
}

declare -A PID_OF URL_OF AUTH_OF UNAVAILABLE

# ---------------------------------------------------------------------------------------- start
for addr in "$NGINX_ADDR" "$PASSTHROUGH_ADDR" "$GATEWAY_ADDR" "$GATEWAY_ADMIN"; do
    ! port_open "$addr" || die "$addr is already in use; stop whatever listens there first"
done

log "starting nginx mock upstream on $NGINX_ADDR (CPU $TARGET_CPU)"
taskset -c "$TARGET_CPU" nginx -p "$RUN" -e "$RUN/nginx-error.log" -c "$LT/nginx.conf" &
PID_OF[nginx]=$!
PIDS+=("${PID_OF[nginx]}")
wait_port "$NGINX_ADDR" "${PID_OF[nginx]}" || { cat "$RUN/nginx-error.log" >&2; die "nginx did not start"; }
URL_OF[nginx.json]="http://$NGINX_ADDR/v1/chat/completions"
URL_OF[nginx.sse]="http://$NGINX_ADDR/sse/v1/chat/completions"
URL_OF[nginx.anthropic]="http://$NGINX_ADDR/anthropic/v1/messages"
AUTH_OF[nginx]=""

log "starting passthrough baseline on $PASSTHROUGH_ADDR ($THREADS thread(s), CPU $TARGET_CPU)"
UPSTREAM=$NGINX_ADDR LISTEN=$PASSTHROUGH_ADDR THREADS=$THREADS \
    taskset -c "$TARGET_CPU" "$PASSTHROUGH_BIN" >"$RUN/passthrough.log" 2>&1 &
PID_OF[passthrough]=$!
PIDS+=("${PID_OF[passthrough]}")
wait_port "$PASSTHROUGH_ADDR" "${PID_OF[passthrough]}" || { cat "$RUN/passthrough.log" >&2; die "passthrough did not start"; }
URL_OF[passthrough.json]="http://$PASSTHROUGH_ADDR/v1/chat/completions"
URL_OF[passthrough.sse]="http://$PASSTHROUGH_ADDR/sse/v1/chat/completions"
URL_OF[passthrough.anthropic]="http://$PASSTHROUGH_ADDR/anthropic/v1/messages"
AUTH_OF[passthrough]=""

URL_OF[gateway.json]="http://$GATEWAY_ADDR/v1/chat/completions"
URL_OF[gateway.sse]="http://$GATEWAY_ADDR/v1/chat/completions"
URL_OF[gateway.anthropic]="http://$GATEWAY_ADDR/v1/chat/completions"
AUTH_OF[gateway]=$KEY
if [[ " $TARGETS " == *" gateway "* || " $TARGETS " == *" metered "* ]]; then
    if [[ -n $GATEWAY_BUILD_ERR ]]; then
        UNAVAILABLE[gateway]=$GATEWAY_BUILD_ERR
    elif [[ ! -x $GATEWAY_BIN ]]; then
        UNAVAILABLE[gateway]="$GATEWAY_BIN is missing"
    else
        log "starting gateway on $GATEWAY_ADDR (CPU $TARGET_CPU): portcullis serve --config load-tests/gateway.toml"
        RUST_LOG=${RUST_LOG:-warn} taskset -c "$TARGET_CPU" "$GATEWAY_BIN" serve --config "$LT/gateway.toml" \
            >"$RUN/gateway.log" 2>&1 &
        PID_OF[gateway]=$!
        PIDS+=("${PID_OF[gateway]}")
        if ! wait_port "$GATEWAY_ADDR" "${PID_OF[gateway]}"; then
            if kill -0 "${PID_OF[gateway]}" 2>/dev/null; then
                UNAVAILABLE[gateway]="portcullis is running but not listening on $GATEWAY_ADDR after 10 s"
            else
                wait "${PID_OF[gateway]}" && rc=0 || rc=$?
                UNAVAILABLE[gateway]="portcullis serve exited with status $rc before listening on $GATEWAY_ADDR: $(tail -3 "$RUN/gateway.log" | tr '\n' ' ')"
            fi
        fi
    fi
fi

# `metered` is the same gateway process, called with the key that has limits.
for m in json sse anthropic; do URL_OF[metered.$m]=${URL_OF[gateway.$m]}; done
AUTH_OF[metered]=$METERED_KEY
[[ -z ${PID_OF[gateway]:-} ]] || PID_OF[metered]=${PID_OF[gateway]}
[[ -z ${UNAVAILABLE[gateway]:-} ]] || UNAVAILABLE[metered]=${UNAVAILABLE[gateway]}

body_of() {
    case $1 in
        sse) echo "$BODY_SSE" ;;
        anthropic) echo "$BODY_ANTHROPIC" ;;
        *) echo "$BODY_JSON" ;;
    esac
}

# One request per target and mode before loading it: a target that does not answer 200 is
# reported as not measured instead of producing a table full of error responses.
for t in $TARGETS; do
    [[ -n ${PID_OF[$t]:-} && -z ${UNAVAILABLE[$t]:-} ]] || continue
    for m in $MODES; do
        why=$(probe "$t" "${URL_OF[$t.$m]}" "$(body_of "$m")" "${AUTH_OF[$t]}" "$m")
        [[ -z $why ]] || UNAVAILABLE[$t.$m]=$why
    done
done

unavailable_reason() { echo "${UNAVAILABLE[$1]:-${UNAVAILABLE[$1.$2]:-}}"; }

# ------------------------------------------------------------------------------------------ run
# run_wrk TARGET MODE CONC DURATION OUTFILE
run_wrk() {
    BODY=$(body_of "$2") AUTH=${AUTH_OF[$1]} taskset -c "$LOAD_CPU" \
        wrk -t1 -c"$3" -d"$4" --latency -s "$LT/post.lua" "${URL_OF[$1.$2]}" >"$5" 2>&1
}

for t in $TARGETS; do
    for m in $MODES; do
        [[ -z $(unavailable_reason "$t" "$m") ]] || continue
        log "warm-up $t $m ($WARMUP)"
        run_wrk "$t" "$m" 10 "$WARMUP" "$RUN/warmup-$t-$m.txt"
    done
done

# Interleaved so that the runs compared in one ratio are seconds apart, not minutes.
for c in $CONCURRENCY; do
    for m in $MODES; do
        for t in $TARGETS; do
            why=$(unavailable_reason "$t" "$m")
            if [[ -n $why ]]; then
                python3 "$LT/report.py" unavailable --target "$t" --mode "$m" --conc "$c" --reason "$why" >>"$RESULTS"
                continue
            fi
            pid=${PID_OF[$t]}
            kill -0 "$pid" 2>/dev/null || die "$t (pid $pid) died; see its log (KEEP_RUNDIR=1)"
            log "$t $m c=$c ($DURATION)"
            out="$RUN/wrk-$t-$m-c$c.txt"
            reset_hwm "$pid"
            before=$(cpu_ticks "$pid")
            run_wrk "$t" "$m" "$c" "$DURATION" "$out" || { cat "$out" >&2; die "wrk failed"; }
            after=$(cpu_ticks "$pid")
            python3 "$LT/report.py" record --target "$t" --mode "$m" --conc "$c" --wrk "$out" \
                --cpu-ticks $((after - before)) --clk-tck "$CLK_TCK" --hwm-kb "$(hwm_kb "$pid")" >>"$RESULTS"
            sleep 0.5 # let the closed connections drain before the next run
        done
    done
done

# --------------------------------------------------------------------------------------- report
mock_size() { wc -c <"$RUN/probe-nginx-$1.out" 2>/dev/null || echo "?"; }
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || COMMIT="$COMMIT (with uncommitted changes)"
CPU_MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
python3 "$LT/report.py" render "$RESULTS" \
    --meta "date=$(date -u '+%Y-%m-%d %H:%M UTC')" \
    --meta "machine=$(hostname), ${CPU_MODEL:-unknown CPU}, $NCPU CPUs, Linux $(uname -r)" \
    --meta "commit=$COMMIT" \
    --meta "runs=wrk 1 thread, $DURATION each (after a $WARMUP warm-up per target), concurrency $CONCURRENCY; servers on CPU $TARGET_CPU, wrk on CPU $LOAD_CPU; passthrough and gateway with 1 worker thread (THREADS=$THREADS for the passthrough)" \
    --meta "requests=POST ${#BODY_JSON} B body (json) / ${#BODY_SSE} B body with stream:true (sse, anthropic); the mock answers $(mock_size json) B of JSON / $(mock_size sse) B of OpenAI SSE / $(mock_size anthropic) B of Anthropic SSE (the gateway translates the latter to OpenAI chunks)" \
    >"$LT/out/latest.md"
cat "$LT/out/latest.md"
echo "(written to load-tests/out/latest.md)" >&2

status=0
for t in $TARGETS; do
    for m in $MODES; do
        why=$(unavailable_reason "$t" "$m")
        if [[ -n $why ]]; then
            echo "run.sh: $t ($m) was NOT measured: $why" >&2
            status=2
        fi
    done
done
exit $status

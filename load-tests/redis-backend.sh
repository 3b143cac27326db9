#!/usr/bin/env bash
# The gateway on the Redis state backend: CPU per request of the gateway and of redis-server, and
# Redis commands per request, for one json run (wrk, 10 connections). Compare two builds in one
# sitting, e.g. before and after a change:
#
#   load-tests/redis-backend.sh target/release/portcullis after
#   KEY=pc-load-metered-key load-tests/redis-backend.sh /tmp/portcullis-old before
#
# KEY: pc-load-test-key (no limits; default) or pc-load-metered-key (limits: a reservation and a
# settlement per request). Servers on CPU 1, wrk on CPU 0, as in run.sh. Needs redis-server,
# redis-cli, nginx, wrk, taskset, python3.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${1:-$ROOT/target/release/portcullis}
LABEL=${2:-$(basename "$BIN")}
KEY=${KEY:-pc-load-test-key}
DURATION=${DURATION:-8s}
REDIS_PORT=${REDIS_PORT:-16399}
RUN=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-redis-load.XXXXXX")
chmod 755 "$RUN"

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$RUN"
}
trap cleanup EXIT

ticks() {
    local s
    read -r s <"/proc/$1/stat"
    s=${s##*) }
    # shellcheck disable=SC2086
    set -- $s
    echo $((${12} + ${13}))
}

taskset -c 1 redis-server --port "$REDIS_PORT" --save '' --appendonly no >"$RUN/redis.log" 2>&1 &
RPID=$!
PIDS+=("$RPID")
taskset -c 1 nginx -p "$RUN" -e "$RUN/nginx-error.log" -c "$ROOT/load-tests/nginx.conf" &
PIDS+=("$!")
sleep 0.5
PORTCULLIS_STATE__BACKEND=redis PORTCULLIS_STATE__REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" RUST_LOG=warn \
    taskset -c 1 "$BIN" serve --config "$ROOT/load-tests/gateway.toml" >"$RUN/gateway.log" 2>&1 &
GPID=$!
PIDS+=("$GPID")
sleep 1.5

export BODY='{"model":"bench:gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}]}' AUTH=$KEY
URL=http://127.0.0.1:18083/v1/chat/completions
taskset -c 0 wrk -t1 -c10 -d2s -s "$ROOT/load-tests/post.lua" "$URL" >/dev/null
redis-cli -p "$REDIS_PORT" config resetstat >/dev/null
g0=$(ticks "$GPID")
r0=$(ticks "$RPID")
out=$(taskset -c 0 wrk -t1 -c10 -d"$DURATION" -s "$ROOT/load-tests/post.lua" "$URL" | grep '@@WRK')
sleep 6 # the usage buffer is written every 5 s: count its writes too
g1=$(ticks "$GPID")
r1=$(ticks "$RPID")
cmds=$(redis-cli -p "$REDIS_PORT" info stats | sed -n 's/^total_commands_processed:\([0-9]*\).*/\1/p')
python3 - "$LABEL" "$out" "$((g1 - g0))" "$((r1 - r0))" "$cmds" "$(getconf CLK_TCK)" <<'PY'
import json, sys
label, out, g, r, cmds, tck = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
w = json.loads(out.split("@@WRK ", 1)[1])
n = w["requests"]
print(f"{label}: {n / w['duration_us'] * 1e6:,.0f} req/s, p50 {w['latency_us']['p50']} µs, "
      f"gateway CPU {g / tck * 1e6 / n:.1f} µs/req, redis CPU {r / tck * 1e6 / n:.1f} µs/req, "
      f"redis commands/req {cmds / n:.3f}, errors {sum(w['errors'].values())}")
PY

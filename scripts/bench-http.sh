#!/usr/bin/env bash
# HTTP load benchmark with wrk, tokens checked on every request: /health, starting an
# instance, and listing tasks, on SQLite and on PostgreSQL. Prints requests/s, p99 latency
# and non-2xx answers per case.
#
#   scripts/bench-http.sh [--binary PATH] [--backends sqlite,postgres] [--duration 10s]
#                         [--connections 16] [--threads 2] [--no-token]
#
# --binary: the steadyflow binary to measure (default: target/release/steadyflow, built
# with `cargo build --release` first). --no-token: send no Authorization header (for a
# binary from before authentication, to compare against).
set -euo pipefail
cd "$(dirname "$0")/.."

binary=target/release/steadyflow
backends=sqlite,postgres
duration=10s
connections=16
threads=2
send_token=1
pg_admin=${STEADYFLOW_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}

while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary=$2; shift 2 ;;
        --backends) backends=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --connections) connections=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --no-token) send_token=0; shift ;;
        -h|--help) sed -n 2,12p "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

command -v wrk >/dev/null || { echo "wrk is not installed (Debian: apt-get install wrk)" >&2; exit 2; }
if [ "$binary" = target/release/steadyflow ]; then
    cargo build --release -q -p steadyflow
fi

work=$(mktemp -d)
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/bench.bpmn" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<definitions xmlns="http://www.omg.org/spec/BPMN/20100524/MODEL" xmlns:camunda="http://camunda.org/schema/1.0/bpmn" targetNamespace="bench">
  <process id="httpbench" isExecutable="true">
    <startEvent id="s"/>
    <sequenceFlow id="f1" sourceRef="s" targetRef="review"/>
    <userTask id="review" name="Review" camunda:candidateGroups="staff"/>
    <sequenceFlow id="f2" sourceRef="review" targetRef="e"/>
    <endEvent id="e"/>
  </process>
</definitions>
EOF
cat >"$work/start.lua" <<'EOF'
wrk.method = "POST"
wrk.body = '{"variables":{"amount":1500}}'
wrk.headers["Content-Type"] = "application/json"
EOF

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wrk's summary as: req/s p99 non2xx
measure() {
    local url=$1; shift
    local out
    out=$(wrk -t"$threads" -c"$connections" -d"$duration" --latency "$@" "$url")
    local rps p99 bad
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    bad=$(awk '/Non-2xx or 3xx responses/ {print $5}' <<<"$out")
    echo "$rps $p99 ${bad:-0}"
}

run_backend() {
    local backend=$1 url dbname=""
    local data="$work/$backend"
    mkdir -p "$data"
    if [ "$backend" = postgres ]; then
        dbname="sf_bench_http_$$"
        psql -q "$pg_admin" -c "DROP DATABASE IF EXISTS $dbname" -c "CREATE DATABASE $dbname" >/dev/null
        url="${pg_admin%/*}/$dbname"
    else
        url="sqlite://$data/steadyflow.db"
    fi
    local sf=("$binary")
    local token=""
    if [ "$send_token" = 1 ]; then
        "${sf[@]}" user add bench --role operator --group staff --database-url "$url" --data-dir "$data" 2>/dev/null
        token=$("${sf[@]}" user token bench --ttl 1h --database-url "$url" --data-dir "$data" 2>/dev/null)
    fi
    local port
    port=$(free_port)
    STEADYFLOW_LOG=warn "${sf[@]}" serve --listen "127.0.0.1:$port" --database-url "$url" --data-dir "$data" &
    server_pid=$!
    local base="http://127.0.0.1:$port"
    for _ in $(seq 1 100); do curl -sf "$base/health" >/dev/null && break; sleep 0.1; done
    local auth=()
    [ -n "$token" ] && auth=(-H "Authorization: Bearer $token")
    curl -sf "${auth[@]}" -X POST -H 'Content-Type: application/xml' --data-binary @"$work/bench.bpmn" \
        "$base/api/v1/process-definitions" >/dev/null
    local health start tasks
    health=$(measure "$base/health")
    start=$(measure "$base/api/v1/process-definitions/key/httpbench/start" -s "$work/start.lua" "${auth[@]}")
    tasks=$(measure "$base/api/v1/tasks?candidateGroup=staff&limit=50" "${auth[@]}")
    printf '%-9s %-16s %10s %10s %8s\n' "$backend" health $health
    printf '%-9s %-16s %10s %10s %8s\n' "$backend" start-instance $start
    printf '%-9s %-16s %10s %10s %8s\n' "$backend" list-tasks $tasks
    kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
    server_pid=
    if [ -n "$dbname" ]; then
        psql -q "$pg_admin" -c "DROP DATABASE IF EXISTS $dbname WITH (FORCE)" >/dev/null
    fi
}

printf '%-9s %-16s %10s %10s %8s\n' backend case "req/s" p99 non-2xx
IFS=, read -ra list <<<"$backends"
for b in "${list[@]}"; do
    run_backend "$b"
done

#!/usr/bin/env bash
# The main job on embedded defaults, end to end: build, start a swarm manager (its bucket a
# local directory) and two agents in a private swarm on loopback that upload to it (the first
# start fetches the model), import 512 real texts into one, watch them reach the other agent and
# the manager, search on both, delete on the writer and see it vanish everywhere, then stop all
# three cleanly; the manager's last export leaves Parquet files in its bucket. Data stays in
# $MURMUR_DEMO_DIR (default ./murmur-data/demo) after the run; each run starts afresh.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked -p murmur-agent -p murmur-manager
bin="${CARGO_TARGET_DIR:-target}/release/murmur-agent"
manager_bin="${CARGO_TARGET_DIR:-target}/release/murmur-manager"
root="${MURMUR_DEMO_DIR:-murmur-data/demo}"
rm -rf "$root"
mkdir -p "$root/north" "$root/south" "$root/manager"
key=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
token=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
pids=()
trap 'for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT

wait_for_file() {
  for _ in $(seq 1 600); do
    [ -s "$1" ] && return 0
    sleep 0.2
  done
  echo "timed out waiting for $1" >&2
  exit 1
}

start_agent() { # name, extra args...
  local name=$1
  shift
  "$bin" run --data-dir "$root/$name" --api-addr 127.0.0.1:0 --swarm-listen /ip4/127.0.0.1/tcp/0 \
    --swarm-key "$key" --no-mdns "$@" 2>>"$root/$name.log" &
  pids+=($!)
  wait_for_file "$root/$name/api.addr"
  wait_for_file "$root/$name/swarm.addr"
}

"$manager_bin" run --data-dir "$root/manager" --uplink-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
  --swarm-key "$key" --operator-token "$token" --export-interval-secs 5 2>>"$root/manager.log" &
manager_pid=$!
pids+=($manager_pid)
wait_for_file "$root/manager/uplink.addr"
wait_for_file "$root/manager/http.addr"
manager="http://$(cat "$root/manager/http.addr")"
echo "manager: dashboard at $manager/#token=$token (bucket $root/manager/bucket)"
# The manager's operator API (GET path, or POST path JSON), with the token; prints the JSON.
manager_api() {
  python3 - "$manager" "$token" "$@" <<'PY'
import json, sys, urllib.error, urllib.request
base, token, path = sys.argv[1:4]
body = sys.argv[4].encode() if len(sys.argv) > 4 else None
request = urllib.request.Request(base + path, data=body, headers={
    "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
try:
    with urllib.request.urlopen(request, timeout=60) as reply:
        print(reply.read().decode())
except urllib.error.HTTPError as error:
    print(json.dumps({"status": error.code}))
PY
}

start_agent north --manager "$(cat "$root/manager/uplink.addr")"
start_agent south --manager "$(cat "$root/manager/uplink.addr")" --swarm-bootstrap "$(head -n1 "$root/north/swarm.addr")"
north="http://$(cat "$root/north/api.addr")"
south="http://$(cat "$root/south/api.addr")"
echo "agents: north at $north, south at $south (logs in $root/*.log)"

MURMUR_AGENT_URL=$north "$bin" import models/testdata/bench_sentences.txt --namespace debian
MURMUR_AGENT_URL=$north "$bin" remember "The forklift battery in bay 7 is below 20 percent charge." \
  --namespace warehouse --tag forklift
echo "waiting for south to hold what north wrote..."
for _ in $(seq 1 300); do
  held=$(MURMUR_AGENT_URL=$south "$bin" stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["memories"])')
  [ "$held" = 513 ] && break
  sleep 0.2
done
echo "south holds $held memories"
for _ in $(seq 1 300); do
  on_manager=$(manager_api /api/overview | python3 -c 'import json,sys; print(json.load(sys.stdin)["memories"]["live"])')
  [ "$on_manager" = 513 ] && break
  sleep 0.2
done
echo "the manager holds $on_manager memories"
for query in "tools to edit photos" "play music from the command line" "which vehicle needs charging?"; do
  echo; echo "? $query   (asked on south)"
  MURMUR_AGENT_URL=$south "$bin" recall "$query" -k 3
done
echo
forklift=$(MURMUR_AGENT_URL=$south "$bin" recall "which vehicle needs charging?" -k 1 --namespace warehouse \
  | grep -oE '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}' | head -n1)
MURMUR_AGENT_URL=$north "$bin" forget "$forklift"
for _ in $(seq 1 300); do
  MURMUR_AGENT_URL=$south "$bin" recall "which vehicle needs charging?" -k 1 --namespace warehouse | grep -q "$forklift" || break
  sleep 0.2
done
echo "deleted $forklift on north; south no longer finds it"
for _ in $(seq 1 300); do
  manager_api "/api/memories/$forklift" | grep -q '"status": 410' && break
  sleep 0.2
done
echo "the manager has it as deleted (HTTP 410)"
echo; echo "? tools to edit photos   (asked on the manager, over every agent's memories)"
manager_api /api/search '{"query": "tools to edit photos", "k": 3}' |
  python3 -c 'import json,sys; [print("  %.3f  %s" % (h["score"], h["text"][:90])) for h in json.load(sys.stdin)["hits"]]'

echo
MURMUR_AGENT_URL=$south "$bin" stats
echo
kill -TERM "$manager_pid"
wait "$manager_pid"
echo "manager stopped; its bucket's analytics (Parquet, see docs/manager.md to query them):"
find "$root/manager/bucket/v1/analytics" -name '*.parquet' | sort | sed 's/^/  /'

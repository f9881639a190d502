#!/usr/bin/env bash
# Throughput through the proxy vs. straight to the upstream, with wrk on loopback.
# On demand only (never from ctest). Usage: tests/bench/bench_proxy.sh [build dir] [seconds]
# Prints one line per run: "<name>: <requests/s> req/s, p50 <ms>, p99 <ms>".
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$root/build}
secs=${2:-10}
bin=$build/openai-api-route
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

gcc -O2 -o "$work/fast_upstream" "$root/tests/bench/fast_upstream.c" $(pkg-config --cflags --libs libuv)
"$work/fast_upstream" 19311 & pids+=($!)
"$bin" -database "$work/db.sqlite" -set authorization=bench >/dev/null
"$bin" -database "$work/db.sqlite" -add -sk sk-bench -endpoint http://127.0.0.1:19311/v1 >/dev/null
"$bin" -database "$work/db.sqlite" -addr 127.0.0.1:19312 -scripts "$work/none" >/dev/null 2>"$work/proxy.log" & pids+=($!)
# The same proxy with hooks that return at once and record nothing: the difference to the
# default hooks is what authorization, the policy sort and recording cost per request.
mkdir -p "$work/minimal"
cat >"$work/minimal/route.lua" <<'LUA'
return {
  authorize = function() return true end,
  pick_upstream = function(req, ups) return ups[1] end,
  on_response = function() end,
}
LUA
"$bin" -database "$work/db.sqlite" -addr 127.0.0.1:19313 -scripts "$work/minimal" >/dev/null 2>>"$work/proxy.log" & pids+=($!)
sleep 0.5

run() { # name url [header]
  local out
  out=$(wrk -t2 -c50 -d"${secs}s" --latency ${3:+-H "$3"} "$2")
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  echo "$1: $rps req/s, p50 $p50, p99 $p99"
}
run "direct to upstream" http://127.0.0.1:19311/models
run "proxy, default hooks" http://127.0.0.1:19312/v1/models "Authorization: Bearer bench"
run "proxy, minimal hooks" http://127.0.0.1:19313/v1/models "Authorization: Bearer bench"
sleep 1
echo "records written: $(sqlite3 "$work/db.sqlite" 'select count(*) from records')"

#!/usr/bin/env bash
# bench.sh: openai-api-route next to nginx and HAProxy doing the same proxying work on one core,
# in one run, against the same in-memory mock (issue 8, "The benchmark, in the repository").
#
# Usage: tests/bench/bench.sh [--quick] [--binary PATH] [--out FILE] [--rounds N]
#            [--duration SECONDS] [--streams N] [--paced-requests N] [--no-pin|--pin]
#            [--fast-upstream PATH] [--perf] [--check] [--keep]
#
#   --binary          the openai-api-route to measure (default: build/openai-api-route)
#   --out             where the markdown tables go (default /tmp/openai-api-route-bench-*.md;
#                     never commit generated results)
#   --quick           1 round, 1 s per run, 100 idle streams, fast pacing: a few seconds in all,
#                     for ctest (tests/CMakeLists.txt: bench.quick); the numbers mean nothing
#   --check           exit 1 unless every target answered correctly and every column of every
#                     table has a value (ctest uses it; the numbers never decide anything)
#   --perf            also records `perf record --call-graph dwarf` of the default-hooks proxy
#                     under the JSON load and writes the report next to --out
#   --no-pin          do not pin with taskset (the default in --quick and on one core)
#   --keep            keep the work folder (configs, logs, raw wrk outputs)
#
# What it does (Debian 12; installs nginx, haproxy, wrk, and linux-perf for --perf, with
# apt-get when they are missing):
#   - a mock: nginx, 1 worker, answering POST /v1/chat/completions from memory with a 613-byte
#     chat.completion JSON, or, with ?stream=1, a 12.8 KB SSE stream of 40 chunks and
#     `data: [DONE]` (the bytes come from fast_upstream.c --print, so both mocks agree);
#   - the targets, every one on 127.0.0.1 with the client sending `Authorization: Bearer ...`
#     and a 190-byte chat request (a wrk Lua script):
#       direct    straight to the mock (the ceiling)
#       nginx     nginx proxy_pass, 1 worker, upstream keepalive pool, proxy_buffering off
#       haproxy   HAProxy, nbthread 1, http-reuse always, option http-no-delay (without it
#                 HAProxy holds SSE events back for up to 200 ms)
#       route     openai-api-route, default scripts, recording on, fresh database with
#                 `-set authorization=...` and `-add -sk sk-bench -endpoint http://mock/v1`;
#                 metrics and the access log on (the defaults; its log is a file in the work
#                 folder)
#       quiet     the same with `-set access_log=0`: route vs quiet is the access log's cost
#                 (metrics have no switch: they are always on, as in nginx and HAProxy)
#       meta      as quiet, with `-set records_bodies=0`: rows without the request body and
#                 the response text; quiet vs meta is what those texts cost
#       unrec     as quiet, with tests/bench/unrecorded_scripts (the default authorize and
#                 pick_upstream, every row vetoed): quiet vs unrecorded is the records' cost
#       engine    openai-api-route with tests/bench/engine_scripts (hooks that return at once,
#                 no records) and the access log off, as nginx and HAProxy run here: the
#                 request path alone
#   - pinned (unless --no-pin): wrk and the mocks on core 0, the proxy under test on core 1;
#   - per round (3 by default), for each target in turn: `wrk -t1 -c32 -d<dur> --latency`
#     with JSON, then with SSE, then `wrk -t1 -c1` with JSON; medians over the rounds;
#     the proxy's CPU (utime+stime of /proc/PID/stat) per 10,000 requests, its RSS after
#     start-up and its peak RSS (VmHWM);
#   - paced: sse_pace.py serves 20 events 50 ms apart, each stamped with its send time; the
#     client measures the time to first byte and each event's delay, direct and through each
#     proxy; the difference is what the proxy adds;
#   - idle streams: as many concurrent idle SSE streams through openai-api-route as the fd
#     limit allows (10,000 asked; the proxy holds 2 fds per stream: hard limit 20,000 gives
#     about 9,950), with the proxy's RSS and fd count.
# It prints the tables and writes them to --out. Every process it starts is stopped by PID on
# exit.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
export PATH="$PATH:/usr/sbin:/sbin"
# Debian's Python (the tests' rule), whatever python3 comes first in PATH.
py=/usr/bin/python3
[ -x $py ] || py=python3

quick=0 rounds=3 dur=10 out="" bin="$root/build/openai-api-route" fast_upstream="" check=0
pin=auto streams=10000 paced_requests=10 perf=0 keep=0 events=20 interval_ms=50
# --quick sets the defaults; options given explicitly override them, wherever they are.
for a in "$@"; do
    [ "$a" = --quick ] && quick=1 rounds=1 dur=1 streams=100 paced_requests=1 interval_ms=10
done
while [ $# -gt 0 ]; do
    case $1 in
    --quick) ;;
    --check) check=1 ;;
    --perf) perf=1 ;;
    --keep) keep=1 ;;
    --pin) pin=1 ;;
    --no-pin) pin=0 ;;
    --binary) bin=$2; shift ;;
    --out) out=$2; shift ;;
    --rounds) rounds=$2; shift ;;
    --duration) dur=$2; shift ;;
    --streams) streams=$2; shift ;;
    --paced-requests) paced_requests=$2; shift ;;
    --fast-upstream) fast_upstream=$2; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "bench.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[ "$pin" = auto ] && { [ $quick = 1 ] && pin=0 || pin=1; }
[ "$(nproc)" -lt 2 ] && pin=0
[ -n "$out" ] || out=/tmp/openai-api-route-bench-$(date -u +%Y%m%d-%H%M%S).md
[ -x "$bin" ] || { echo "bench.sh: no executable openai-api-route at $bin (--binary)" >&2; exit 2; }
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")

# ---- what it needs
need=()
for p in nginx haproxy wrk curl python3 taskset; do
    command -v "$p" >/dev/null || need+=("$p")
done
[ -n "$fast_upstream" ] || { command -v gcc >/dev/null || need+=(gcc); pkg-config --exists libuv 2>/dev/null || need+=(libuv1-dev pkg-config); }
[ $perf = 1 ] && ! command -v perf >/dev/null && need+=(linux-perf)
if [ ${#need[@]} -gt 0 ]; then
    pkgs=()
    for p in "${need[@]}"; do
        case $p in taskset) pkgs+=(util-linux) ;; *) pkgs+=("$p") ;; esac
    done
    sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "bench.sh: installing ${pkgs[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
fi

work=$(mktemp -d /tmp/route-bench.XXXXXX)
pids=()
cleanup() {
    local p i
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do
        for i in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    if [ $keep = 1 ]; then echo "bench.sh: work folder kept: $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Each idle stream costs the proxy two fds: take the whole hard limit (inherited by all).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fd_limit=$(ulimit -n)

# Prefixes, not functions: a backgrounded function would be a subshell, and its PID not the
# server's (taskset execs the command, so the PID stays the server's).
load_core=() proxy_core=()
[ $pin = 1 ] && load_core=(taskset -c 0) proxy_core=(taskset -c 1)

# start NAME CMD...: runs CMD in the background (logs in $work/NAME.log), records its PID
declare -A pid
start() {
    local name=$1
    shift
    "$@" >"$work/$name.log" 2>&1 &
    pid[$name]=$!
    pids+=($!)
}

wait_port() { # PORT NAME
    local i
    for i in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        kill -0 "${pid[$2]}" 2>/dev/null || break
        sleep 0.05
    done
    echo "bench.sh: $2 is not listening on port $1; its log:" >&2
    tail -20 "$work/$2.log" >&2
    exit 1
}

read -r p_mock p_paced p_nginx p_haproxy p_route p_engine p_route_paced p_quiet p_unrec p_meta < <("$py" -c '
import socket
ss = [socket.socket() for _ in range(10)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')

token=bench-token-$RANDOM$RANDOM
export BENCH_TOKEN=$token

# ---- the bodies, from fast_upstream.c
if [ -z "$fast_upstream" ]; then
    fast_upstream=$work/fast_upstream
    gcc -std=gnu11 -O2 "$here/fast_upstream.c" $(pkg-config --cflags --libs libuv) -o "$fast_upstream"
fi
"$fast_upstream" --print json >"$work/answer.json"
"$fast_upstream" --print sse >"$work/answer.sse"

"$py" - "$work" <<'PY'
import json, sys
w = sys.argv[1]
base = {"model": "gpt-4o-mini", "messages": [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": ""}], "max_tokens": 64}
for name, extra in (("json", {}), ("sse", {"stream": True})):
    body = dict(json.loads(json.dumps(base)), **extra)
    pad = 190 - len(json.dumps(body, separators=(",", ":")))
    body["messages"][1]["content"] = ("Say hello to the benchmark in one sentence. " * 9)[:pad]
    text = json.dumps(body, separators=(",", ":"))
    assert len(text) == 190, len(text)
    accept = 'wrk.headers["Accept"] = "text/event-stream"\n' if extra else ""
    with open("%s/body-%s.txt" % (w, name), "w") as f:
        f.write(text)
    with open("%s/wrk-%s.lua" % (w, name), "w") as f:
        f.write('wrk.method = "POST"\nwrk.body = %s\n'
                'wrk.headers["Content-Type"] = "application/json"\n'
                'wrk.headers["Authorization"] = "Bearer %s"\n%s'
                % (json.dumps(text), __import__("os").environ["BENCH_TOKEN"], accept))
PY

# nginx's config parser takes at most 4 KiB per string: the SSE body is served as the
# concatenation of variables set from constants (still from memory, no file).
"$py" - "$work" "$p_mock" <<'PY'
import sys
w, port = sys.argv[1], sys.argv[2]
js = open(w + "/answer.json").read()
sse = open(w + "/answer.sse").read()
for t in (js, sse):
    assert "'" not in t and "$" not in t and "\\" not in t
parts = [sse[i:i + 3000] for i in range(0, len(sse), 3000)]
sets = "".join("            set $p%d '%s';\n" % (i, p) for i, p in enumerate(parts))
cat = "".join("$p%d" % i for i in range(len(parts)))
open(w + "/mock.conf", "w").write("""
location = /v1/chat/completions {
    if ($arg_stream) { rewrite ^ /_sse last; }
    default_type application/json;
    return 200 '%s';
}
location = /_sse {
    internal;
    default_type text/event-stream;
%s    return 200 "%s";
}
""" % (js, sets, cat))
PY

# nginx_conf DIR WORKER_CONNECTIONS SERVER_BLOCK: a self-contained config under DIR
nginx_conf() {
    mkdir -p "$1/tmp"
    local user=""
    [ "$(id -u)" -eq 0 ] && user="user root;"
    cat >"$1/nginx.conf" <<EOF
$user
worker_processes 1;
worker_rlimit_nofile $fd_limit;
daemon off;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections $2; }
http {
    access_log off;
    client_body_temp_path $1/tmp/body;
    proxy_temp_path $1/tmp/proxy;
    fastcgi_temp_path $1/tmp/fastcgi;
    uwsgi_temp_path $1/tmp/uwsgi;
    scgi_temp_path $1/tmp/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
$3
}
EOF
}

mkdir -p "$work/mock" "$work/nginx" "$work/route-db" "$work/engine-db" "$work/paced-db" \
    "$work/quiet-db" "$work/unrec-db" "$work/meta-db" "$work/none" "$work/runs"
nginx_conf "$work/mock" 4096 "    server {
        listen 127.0.0.1:$p_mock backlog=4096;
$(cat "$work/mock.conf")
    }"
nginx_conf "$work/nginx" 4096 "    upstream mock { server 127.0.0.1:$p_mock; keepalive 64; keepalive_requests 10000000; }
    upstream paced { server 127.0.0.1:$p_paced; keepalive 16; }
    proxy_http_version 1.1;
    proxy_set_header Connection \"\";
    proxy_buffering off;
    server {
        listen 127.0.0.1:$p_nginx backlog=4096;
        location / { proxy_pass http://mock; }
        location /v1/paced/ { proxy_pass http://paced; }
    }"
cat >"$work/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn $(((fd_limit - 100) / 2))
defaults
    mode http
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    option http-keep-alive
    http-reuse always
    option http-no-delay
frontend bench
    bind 127.0.0.1:$p_haproxy
    use_backend paced if { path_beg /v1/paced/ }
    default_backend mock
backend mock
    server mock 127.0.0.1:$p_mock
backend paced
    server paced 127.0.0.1:$p_paced
EOF

route_db() { # DIR ENDPOINT
    "$bin" -database "$1/db.sqlite" -set "authorization=$token" >/dev/null
    # The canned stream is the same bytes whatever the request asks (usage included), and every
    # target must pass it on byte for byte: no forced include_usage here (the same request and
    # path as the earlier runs; the forced path is tests/integration/test_stream_usage.py's).
    "$bin" -database "$1/db.sqlite" -set "force_stream_usage=0" >/dev/null
    "$bin" -database "$1/db.sqlite" -add -sk sk-bench -endpoint "$2" >/dev/null
}
route_db "$work/route-db" "http://127.0.0.1:$p_mock/v1"
route_db "$work/engine-db" "http://127.0.0.1:$p_mock/v1"
route_db "$work/paced-db" "http://127.0.0.1:$p_paced/v1"
route_db "$work/quiet-db" "http://127.0.0.1:$p_mock/v1"
"$bin" -database "$work/quiet-db/db.sqlite" -set access_log=0 >/dev/null
route_db "$work/meta-db" "http://127.0.0.1:$p_mock/v1"
"$bin" -database "$work/meta-db/db.sqlite" -set access_log=0 >/dev/null
"$bin" -database "$work/meta-db/db.sqlite" -set records_bodies=0 >/dev/null
route_db "$work/unrec-db" "http://127.0.0.1:$p_mock/v1"
"$bin" -database "$work/unrec-db/db.sqlite" -set access_log=0 >/dev/null
"$bin" -database "$work/engine-db/db.sqlite" -set access_log=0 >/dev/null
# Room for every idle stream whatever the fd limit (the default max_connections is 10,000).
"$bin" -database "$work/paced-db/db.sqlite" -set "max_connections=$((streams + 1000))" >/dev/null
# warn: no log line per request, as nginx and HAProxy run with their access logs off.
export ROUTE_LOG_LEVEL=${ROUTE_LOG_LEVEL:-warn}

start mock "${load_core[@]}" nginx -p "$work/mock" -c "$work/mock/nginx.conf" -e "$work/mock/error.log"
start paced "${load_core[@]}" "$py" "$here/sse_pace.py" serve "$p_paced" --events $events --interval-ms $interval_ms
start nginx "${proxy_core[@]}" nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log"
start haproxy "${proxy_core[@]}" haproxy -db -f "$work/haproxy.cfg"
start route "${proxy_core[@]}" "$bin" -database "$work/route-db/db.sqlite" -addr "127.0.0.1:$p_route" -scripts "$work/none"
start engine "${proxy_core[@]}" "$bin" -database "$work/engine-db/db.sqlite" -addr "127.0.0.1:$p_engine" -scripts "$here/engine_scripts"
start quiet "${proxy_core[@]}" "$bin" -database "$work/quiet-db/db.sqlite" -addr "127.0.0.1:$p_quiet" -scripts "$work/none"
start meta "${proxy_core[@]}" "$bin" -database "$work/meta-db/db.sqlite" -addr "127.0.0.1:$p_meta" -scripts "$work/none"
start unrec "${proxy_core[@]}" "$bin" -database "$work/unrec-db/db.sqlite" -addr "127.0.0.1:$p_unrec" -scripts "$here/unrecorded_scripts"
start route_paced "${proxy_core[@]}" "$bin" -database "$work/paced-db/db.sqlite" -addr "127.0.0.1:$p_route_paced" -scripts "$work/none"
wait_port "$p_mock" mock
wait_port "$p_paced" paced
wait_port "$p_nginx" nginx
wait_port "$p_haproxy" haproxy
wait_port "$p_route" route
wait_port "$p_engine" engine
wait_port "$p_quiet" quiet
wait_port "$p_meta" meta
wait_port "$p_unrec" unrec
wait_port "$p_route_paced" route_paced

targets=(direct nginx haproxy route quiet meta unrec engine)
declare -A port=([direct]=$p_mock [nginx]=$p_nginx [haproxy]=$p_haproxy [route]=$p_route [quiet]=$p_quiet [meta]=$p_meta [unrec]=$p_unrec [engine]=$p_engine)
# The process whose CPU and memory count: the nginx worker, not its master.
declare -A measured=([nginx]="" [haproxy]=${pid[haproxy]} [route]=${pid[route]} [quiet]=${pid[quiet]} [meta]=${pid[meta]} [unrec]=${pid[unrec]} [engine]=${pid[engine]})
child_of() { # PID: the first process whose parent is PID (from /proc: no procps needed)
    local d
    for d in /proc/[0-9]*; do
        [ "$(sed 's/.*) //' "$d/stat" 2>/dev/null | awk '{print $2}')" = "$1" ] && { echo "${d#/proc/}"; return 0; }
    done
    return 0
}
for i in $(seq 100); do
    measured[nginx]=$(child_of "${pid[nginx]}")
    [ -n "${measured[nginx]}" ] && break
    sleep 0.05
done
[ -n "${measured[nginx]}" ] || { echo "bench.sh: no nginx worker under PID ${pid[nginx]}" >&2; exit 1; }
status_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
for t in nginx haproxy route quiet meta unrec engine; do
    echo "idle_kib=$(status_kib "${measured[$t]}" VmRSS)" >"$work/runs/mem.$t"
done

# ---- every target answers both bodies correctly before anything is measured
bad=0
for t in "${targets[@]}"; do
    for mode in json sse; do
        q=""; [ $mode = sse ] && q="?stream=1"
        code=$(curl -s -o "$work/check.$t.$mode" -w '%{http_code}' -X POST \
            -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
            --data-binary "@$work/body-$mode.txt" "http://127.0.0.1:${port[$t]}/v1/chat/completions$q" || true)
        if [ $mode = json ]; then cmp -s "$work/check.$t.$mode" "$work/answer.json" && ok=1 || ok=0
        else cmp -s "$work/check.$t.$mode" "$work/answer.sse" && ok=1 || ok=0; fi
        if [ "$code" != 200 ] || [ $ok = 0 ]; then
            echo "bench.sh: $t $mode: status $code, body not the mock's: $(head -c 300 "$work/check.$t.$mode")" >&2
            bad=1
        fi
    done
done
[ $bad = 0 ] || { echo "bench.sh: a target does not proxy correctly; see above" >&2; exit 1; }

# run_wrk KIND TARGET MODE ROUND CONNECTIONS: one wrk run, its output and the proxy's CPU
run_wrk() {
    local kind=$1 t=$2 mode=$3 r=$4 c=$5 q="" p=${measured[$2]:-} before=0 f
    [ $mode = sse ] && q="?stream=1"
    f=$work/runs/$kind.$t.$mode.$r
    [ -n "$p" ] && before=$(cpu_ticks "$p")
    "${load_core[@]}" wrk -t1 -c"$c" -d"${dur}s" --latency -s "$work/wrk-$mode.lua" \
        "http://127.0.0.1:${port[$t]}/v1/chat/completions$q" >"$f.wrk" 2>&1 || true
    [ -n "$p" ] && echo "cpu_ticks=$(($(cpu_ticks "$p") - before))" >"$f.cpu"
    return 0
}

total_runs=$((rounds * ${#targets[@]} * 3))
echo "bench.sh: $total_runs wrk runs of ${dur}s ($rounds rounds), pinned: $([ $pin = 1 ] && echo yes || echo no)" >&2
if [ $quick = 0 ]; then # warm-up: pools filled, caches warm
    for t in "${targets[@]}"; do
        for mode in json sse; do
            "${load_core[@]}" wrk -t1 -c32 -d1s -s "$work/wrk-$mode.lua" "http://127.0.0.1:${port[$t]}/v1/chat/completions$([ $mode = sse ] && echo '?stream=1')" >"$work/runs/warm.$t.$mode.0.wrk" 2>&1 || true
        done
    done
fi
for r in $(seq "$rounds"); do
    for t in "${targets[@]}"; do
        run_wrk c32 "$t" json "$r" 32
        run_wrk c32 "$t" sse "$r" 32
        run_wrk c1 "$t" json "$r" 1
    done
    echo "bench.sh: round $r of $rounds done" >&2
done
for t in nginx haproxy route quiet meta unrec engine; do
    echo "hwm_kib=$(status_kib "${measured[$t]}" VmHWM)" >>"$work/runs/mem.$t"
done

if [ $perf = 1 ]; then
    perf_out=${out%.md}.perf.txt
    perf record -q --call-graph dwarf -F 499 -p "${measured[route]}" -o "$work/perf.data" -- sleep "$dur" >/dev/null 2>&1 &
    perf_pid=$!
    pids+=("$perf_pid")
    run_wrk perf route json 1 32
    wait "$perf_pid" || true
    perf report -i "$work/perf.data" --stdio --no-children --percent-limit 0.5 2>/dev/null | head -300 >"$perf_out" || true
    echo "bench.sh: profile of the default-hooks proxy under JSON load: $perf_out" >&2
fi

# ---- paced SSE: time to first byte and per-event delay, direct and through each proxy
paced_url() { echo "http://127.0.0.1:$1/v1/paced/chat/completions"; }
"${load_core[@]}" "$py" "$here/sse_pace.py" paced --requests "$paced_requests" \
    "direct=$(paced_url "$p_paced")" "nginx=$(paced_url "$p_nginx")" \
    "haproxy=$(paced_url "$p_haproxy")" "route=$(paced_url "$p_route_paced")" \
    >"$work/runs/paced.all" 2>&1 || true
for t in direct nginx haproxy route; do
    grep "^$t " "$work/runs/paced.all" >"$work/runs/paced.$t" || cp "$work/runs/paced.all" "$work/runs/paced.$t"
done

# ---- idle streams through openai-api-route
fit=$(((fd_limit - 64) / 2))
asked=$streams
[ "$streams" -gt "$fit" ] && streams=$fit
"${load_core[@]}" "$py" "$here/sse_pace.py" idle "http://127.0.0.1:$p_route_paced/v1/paced/hold/chat/completions" \
    --streams "$streams" --pid "${pid[route_paced]}" --timeout 300 >"$work/runs/idle.route" 2>&1 || true
echo "asked=$asked fd_limit=$fd_limit" >>"$work/runs/idle.route"

# ---- records written by the default target (after a clean stop, so the writer has flushed)
kill -TERM "${pid[route]}" 2>/dev/null || true
for _ in $(seq 300); do kill -0 "${pid[route]}" 2>/dev/null || break; sleep 0.1; done
rows=$("$py" -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute("select count(*) from records").fetchone()[0])' "$work/route-db/db.sqlite" 2>/dev/null || echo "?")
echo "rows=$rows" >"$work/runs/records.route"

# ---- the tables
{
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "cpu=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo) x$(nproc)"
    echo "nginx=$(nginx -v 2>&1 | sed 's/.*nginx\///')"
    echo "haproxy=$(haproxy -v 2>/dev/null | awk 'NR==1 {print $3}')"
    echo "wrk=$(wrk -v 2>&1 | awk 'NR==1 {print $2}')"
    echo "binary=$bin"
    echo "pinned=$pin"
    echo "rounds=$rounds"
    echo "duration=$dur"
    echo "quick=$quick"
    echo "events=$events interval_ms=$interval_ms paced_requests=$paced_requests"
} >"$work/runs/meta"
"$py" "$here/bench_report.py" "$work/runs" "$out" $([ $check = 1 ] && echo --check)

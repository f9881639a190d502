#!/usr/bin/env bash
# TLS to upstreams: requests/s through the proxy with pooled (reused) TLS connections vs. a
# full handshake per request, and the memory an idle pooled TLS upstream connection costs.
# On demand only (never from ctest); loopback only.
#
# Usage: tests/bench/bench_tls.sh [build dir] [seconds] [concurrency for the memory run]
#   BENCH_ONLY=throughput or BENCH_ONLY=memory runs one half; BENCH_PORT_BASE (19400) moves
#   the loopback ports it uses; BENCH_BODY_BYTES pads the answers of the memory run (default:
#   a ~150-byte chat.completion; e.g. 262144 for big answers that fill the read buffers).
#
# Builds tls_upstream.c (a libuv upstream whose TLS is the project's own src/tls.c, server
# side, with no session cache: every new connection is a full ECDHE-ECDSA P-256 handshake),
# makes a throwaway CA and a DNS:localhost certificate with openssl, then:
#   1. wrk -t2 -c50 straight to the HTTPS upstream (keep-alive), for reference;
#   2. wrk through a proxy whose upstream keeps connections alive: the proxy reuses its pooled
#      TLS connections, so requests carry no handshake;
#   3. wrk through a proxy whose upstream answers "Connection: close" and closes: one TCP
#      connect and one full TLS handshake per request;
#   3b. the same with `openssl s_server -WWW` as the upstream (HTTP/1.0, closes after each
#      answer; OpenSSL's ECC is much faster than mbedTLS's, so the proxy's side of the
#      handshake dominates): once with session tickets and cache, so the proxy's saved session
#      makes every handshake after the first an abbreviated one, once with -no_ticket -no_cache
#      (a full handshake each time);
#   4. memory: 8 upstreams (different ports = different origins) that hold each answer 300 ms,
#      a proxy with policy=random, a warm-up burst, VmRSS; then N requests at once (curl
#      --parallel), each needing its own upstream connection, all completing, so about N
#      connections (at most 64 per origin) stay idle in the pool afterwards; VmRSS again.
#      Where gdb is installed, each VmRSS is also taken after malloc_trim(0) in the proxy, which
#      hands back the freed heap glibc kept from the burst's client buffers: that second
#      figure is the memory the idle connections themselves hold.
#      (RSS after - RSS before) / (pooled connections after - before) is the cost of one idle
#      pooled connection, client-side leftovers included; the same run over plain HTTP
#      upstreams gives the baseline, and the difference is what TLS adds.
# Prints one line per measurement.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$root/build}
secs=${2:-10}
nconc=${3:-256}
bin=$build/openai-api-route
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
base=${BENCH_PORT_BASE:-19400}

# ---- certificates
ossl() { openssl "$@" >/dev/null 2>&1; }
ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/ca.key"
ossl req -x509 -new -key "$work/ca.key" -subj "/CN=bench CA" -days 2 -sha256 \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign -out "$work/ca.crt"
ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/srv.key"
ossl req -new -key "$work/srv.key" -subj "/CN=localhost" -out "$work/srv.csr"
printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' >"$work/ext"
ossl x509 -req -in "$work/srv.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" -CAcreateserial \
    -days 2 -sha256 -extfile "$work/ext" -out "$work/srv.crt"

# ---- the upstream
gcc -std=gnu11 -O2 -I"$root/include" "$root/tests/bench/tls_upstream.c" "$root/src/tls.c" \
    "$root/src/util.c" $(pkg-config --cflags --libs libuv) -lmbedtls -lmbedx509 -lmbedcrypto \
    -o "$work/tls_upstream"
up() { "$work/tls_upstream" "$@" & pids+=($!); }

wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 not up" >&2; exit 1; }

# proxy NAME PORT [policy] ENDPOINT...: a proxy with its own database; prints nothing
proxy() {
    local name=$1 port=$2 policy=$3
    shift 3
    local db="$work/$name.sqlite"
    "$bin" -database "$db" -set authorization=bench >/dev/null
    "$bin" -database "$db" -set "policy=$policy" >/dev/null
    local i=0
    for ep in "$@"; do
        i=$((i + 1))
        "$bin" -database "$db" -add -sk "sk-bench-$i" -endpoint "$ep" >/dev/null
    done
    ROUTE_LOG_LEVEL=warn "$bin" -database "$db" -addr "127.0.0.1:$port" -scripts "$work/none" \
        -ca-file "$work/ca.crt" >/dev/null 2>>"$work/$name.log" &
    pids+=($!)
    eval "pid_$name=$!"
    wait_port "$port"
}

run() { # name url [header]: a 2 s warm-up (fills the proxy's pool), then the measured run
    local out rps p50 p99 errs
    wrk -t2 -c50 -d2s ${3:+-H "$3"} "$2" >/dev/null
    out=$(wrk -t2 -c50 -d"${secs}s" --latency ${3:+-H "$3"} "$2")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    errs=$(awk '/Non-2xx|Socket errors/ {printf "%s ", $0}' <<<"$out")
    echo "$1: $rps req/s, p50 $p50, p99 $p99${errs:+ ($errs)}"
}

auth="Authorization: Bearer bench"
only=${BENCH_ONLY:-all}
if [ "$only" != memory ]; then
up $((base + 1)) "$work/srv.crt" "$work/srv.key" keepalive
up $((base + 2)) "$work/srv.crt" "$work/srv.key" close
wait_port $((base + 1))
wait_port $((base + 2))
proxy reuse $((base + 11)) main "https://localhost:$((base + 1))/v1"
proxy handshake $((base + 12)) main "https://localhost:$((base + 2))/v1"

mkdir -p "$work/www/v1"
echo '{"id":"chatcmpl-1","model":"gpt-4o-mini","choices":[{"message":{"content":"hello"}}]}' \
    >"$work/www/v1/models"
(cd "$work/www" && exec openssl s_server -quiet -accept $((base + 3)) -cert "$work/srv.crt" \
    -key "$work/srv.key" -WWW) >/dev/null 2>&1 &
pids+=($!)
(cd "$work/www" && exec openssl s_server -quiet -accept $((base + 4)) -cert "$work/srv.crt" \
    -key "$work/srv.key" -WWW -no_ticket -no_cache) >/dev/null 2>&1 &
pids+=($!)
wait_port $((base + 3))
wait_port $((base + 4))
proxy resumed $((base + 13)) main "https://localhost:$((base + 3))/v1"
proxy full $((base + 14)) main "https://localhost:$((base + 4))/v1"

run "direct to the https upstream (keep-alive)" "https://localhost:$((base + 1))/models"
run "proxy -> https upstream, pooled TLS connections" "http://127.0.0.1:$((base + 11))/v1/models" "$auth"
run "proxy -> https upstream, full handshake per request" "http://127.0.0.1:$((base + 12))/v1/models" "$auth"
run "proxy -> openssl s_server, resumed handshake per request" "http://127.0.0.1:$((base + 13))/v1/models" "$auth"
run "proxy -> openssl s_server, full handshake per request" "http://127.0.0.1:$((base + 14))/v1/models" "$auth"
for name in reuse handshake resumed full; do
    errs=$(grep -c . "$work/$name.log" || true)
    [ "$errs" = 0 ] || { echo "proxy $name logged:"; sort "$work/$name.log" | uniq -c | sort -rn | head -5; }
done

fi

# ---- memory per idle pooled upstream connection
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
pooled() { # established connections to ports $1..$2 (the proxy's side: dport in range)
    ss -Htn state established "( dport >= :$1 and dport <= :$2 )" | wc -l
}
# VmRSS after malloc_trim(0) in the proxy (with gdb; else empty): freed heap that glibc kept
# (the client buffers of a burst) is not what the pooled connections cost.
trimmed_rss() {
    command -v gdb >/dev/null || return 0
    gdb -p "$1" -batch -ex "call (int) malloc_trim(0)" >/dev/null 2>&1 || return 0
    rss "$1"
}
burst() { # url n: n requests at once, each completing (curl keeps none of them open after)
    local args=() i
    for i in $(seq "$2"); do args+=(-o /dev/null "$1"); done
    curl -s --max-time 60 --parallel --parallel-immediate --parallel-max "$2" \
        -H "$auth" "${args[@]}" >/dev/null 2>&1
}
memory() { # kind(https|http) first-port
    local kind=$1 p0=$2 eps=() i
    for i in $(seq 0 7); do
        if [ "$kind" = https ]; then
            up $((p0 + i)) "$work/srv.crt" "$work/srv.key" keepalive 300 "${BENCH_BODY_BYTES:-0}"
            eps+=("https://localhost:$((p0 + i))/v1")
        else
            up $((p0 + i)) - - keepalive 300 "${BENCH_BODY_BYTES:-0}"
            eps+=("http://127.0.0.1:$((p0 + i))/v1")
        fi
    done
    for i in $(seq 0 7); do wait_port $((p0 + i)); done
    proxy "mem$kind" $((p0 + 20)) random "${eps[@]}"
    local pid
    eval "pid=\$pid_mem$kind"
    local url="http://127.0.0.1:$((p0 + 20))/v1/models"
    # Warm-up: the loop, the hooks, SQLite, and a burst like the measured one but smaller.
    burst "$url" 32
    sleep 1
    local r0 c0 r1 c1 t0 t1 n
    r0=$(rss "$pid")
    t0=$(trimmed_rss "$pid")
    c0=$(pooled "$p0" $((p0 + 7)))
    burst "$url" "$nconc"
    sleep 1
    r1=$(rss "$pid")
    t1=$(trimmed_rss "$pid")
    c1=$(pooled "$p0" $((p0 + 7)))
    n=$((c1 - c0))
    if [ "$n" -le 0 ]; then
        echo "memory $kind: no new pooled connections ($c0 -> $c1)"
        return
    fi
    local line="memory $kind: idle pooled upstream connections $c0 -> $c1;"
    line+=" VmRSS $r0 -> $r1 kB: $(( (r1 - r0) * 1024 / n )) bytes per connection"
    [ -z "$t0" ] || line+="; after malloc_trim $t0 -> $t1 kB: $(( (t1 - t0) * 1024 / n )) bytes per connection"
    echo "$line"
}
if [ "$only" != throughput ]; then
    memory https $((base + 30))
    memory http $((base + 60))
fi

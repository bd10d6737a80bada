#!/usr/bin/env bash
# Cache-hit cost with KEYS_LARGE (1,000,000) cached keys against KEYS_SMALL (1,000), each measured
# against a bare hyper server doing a lookup in a map of the same size (benches/keys/server.rs),
# so the memory hierarchy is charged to both; then the proxy's RSS with its cache filled past
# `cache.max_bytes` against its empty-cache RSS. Issue 16; see benches/README.md.
#
# Run from the project root:   bash benches/keys.sh            (~5 min with the defaults)
#
# What runs (all on 127.0.0.1):
#   bare_small  keys_server holding KEYS_SMALL answers                              :28181
#   bare_large  keys_server holding KEYS_LARGE answers (also every proxy's upstream) :28180
#   proxy_small packages-proxy, KEYS_SMALL keys cached                               :28190
#   proxy_large packages-proxy, KEYS_LARGE keys cached                               :28191
# A key is one page of `GET /orgs/acme/packages/container/p<K>/versions?per_page=1&page=<P>`:
# one container version, ~540 bytes of JSON, its own ETag and Link (a small answer so that a
# million of them fit in memory twice: bare server and proxy).
#
# 1. Fill: wrk (benches/keys/fill.lua) asks for every key once, in order, FILL_CONNS connections
#    over both cores (the proxies run one tokio worker, TOKIO_WORKER_THREADS=1, as proxy.sh's
#    pinned proxy does); every one is a miss the proxy fetches from bare_large and stores. The
#    script checks the proxy's cache then holds that many entries.
# 2. Hits: every server is re-pinned to cpu 1 (all threads), wrk to cpu 0; wrk -t1 -cCONNS with
#    benches/keys/random.lua (each request a key picked uniformly at random among the target's
#    keys: the Lua cost is on wrk's core, the same for every target); ROUNDS rounds of DURATION s,
#    target order rotated each round. Per point: req/s, latency, and the server's CPU per request
#    (from /proc/<pid>/stat), which does not depend on which side saturated.
# 3. RSS: a fresh proxy with `cache.max_bytes = RSS_MAX_BYTES`, default tokio workers, unpinned;
#    VmRSS after a warm-up on one key (the empty-cache baseline), then after RSS_KEYS distinct
#    keys (several times what fits) and RSS_SECS s of random requests over them (misses, stores
#    and evictions: steady state), twice, with the weigher's bytes and the evictions.
#
# Environment (all optional):
#   KEYS_SMALL=1000 KEYS_LARGE=1000000 CONNS=32 ROUNDS=3 DURATION=5 WARMUP=2
#   FILL_CONNS=128 FILL_THREADS=2 PIPELINE=1   the fill's wrk shape; FILL_MAX_SECS=1800 its bound
#   LARGE_MAX_BYTES=8GiB   proxy_large's cache.max_bytes (nothing may be evicted)
#   RSS_MAX_BYTES=268435456 (256 MiB) RSS_KEYS=200000 RSS_SECS=10   step 3; RSS=0 skips it
#   PROXY_CONFIG_EXTRA     TOML appended to every proxy's config (e.g. '[log]\nlevel = "warn"';
#                          the default logs every request, to /dev/null here)
#   PROXY_BIN / KEYS_SERVER_BIN   prebuilt binaries instead of `cargo build --release`
# Quote ratios from one run: the machines are shared and noisy. Needs wrk, curl, python3, taskset.
set -euo pipefail

KEYS_SMALL=${KEYS_SMALL:-1000}
KEYS_LARGE=${KEYS_LARGE:-1000000}
CONNS=${CONNS:-32}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-2}
FILL_CONNS=${FILL_CONNS:-128}
FILL_MAX_SECS=${FILL_MAX_SECS:-1800}
FILL_THREADS=${FILL_THREADS:-2}
PIPELINE=${PIPELINE:-1}
LARGE_MAX_BYTES=${LARGE_MAX_BYTES:-$((8 << 30))}
RSS=${RSS:-1}
RSS_MAX_BYTES=${RSS_MAX_BYTES:-$((256 << 20))}
RSS_KEYS=${RSS_KEYS:-200000}
RSS_SECS=${RSS_SECS:-10}
SERVER_CPU=1 CLIENT_CPU=0
# Not 180xx/181xx: proxy.sh and other benches on this machine use those (a collision on 18190
# once sent another bench's wrk into proxy_small, and probably stopped both proxies in a run).
BARE_LARGE=28180 BARE_SMALL=28181 PROXY_SMALL=28190 PROXY_LARGE=28191 PROXY_RSS=28192

root=$(pwd)
here=$root/benches/keys
[[ -f $here/server.rs ]] || { echo "run from the project root" >&2; exit 2; }
for tool in wrk curl python3 taskset; do
    command -v "$tool" >/dev/null || { echo "$tool not found" >&2; exit 2; }
done
(( $(nproc) >= 2 )) || { echo "needs 2 CPUs" >&2; exit 2; }
for p in $BARE_LARGE $BARE_SMALL $PROXY_SMALL $PROXY_LARGE $PROXY_RSS; do
    if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$p/"; then echo "port $p in use" >&2; exit 2; fi
done

T0=$(date +%s)
log() { printf '[keys.sh %4ds] %s\n' "$(( $(date +%s) - T0 ))" "$*" >&2; }

if [[ -z ${PROXY_BIN:-} || -z ${KEYS_SERVER_BIN:-} ]]; then
    # Two builds: an example pulls in the dev-dependencies' features (tokio's test-util), and the
    # proxy measured must be the one `cargo build --release` (and proxy.sh) makes.
    log "cargo build --release (the proxy), then the keys_server example"
    cargo build --release --quiet
    cargo build --release --quiet --example keys_server
fi
PROXY_BIN=${PROXY_BIN:-$root/target/release/packages-proxy}
KEYS_SERVER_BIN=${KEYS_SERVER_BIN:-$root/target/release/examples/keys_server}

RUN_DIR=$(mktemp -d /tmp/ppkeys.XXXXXX)
RESULTS=$RUN_DIR/results.tsv
# The proxies run through a symlink with their own name, so a clean-up by name elsewhere does not
# stop them (in a first run on a shared machine both were stopped from outside mid-fill);
# check_alive below catches it if it happens anyway.
ln -s "$PROXY_BIN" "$RUN_DIR/ppx-keys-bench"
log "run dir $RUN_DIR; uptime:$(uptime | sed 's/.*load/ load/')"

PIDS=()
WRK_PID=''
cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    [[ -n $WRK_PID ]] && kill "$WRK_PID" 2>/dev/null || true
    # KILL: a proxy holding a million entries takes minutes to free them on a clean shutdown
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    log "stopped ${#PIDS[@]} server(s) this run started; logs in $RUN_DIR"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_http() { # url seconds
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        curl -s -o /dev/null --max-time 1 "$1" && return 0
        sleep 0.1
    done
    log "no answer from $1 after $2 s"
    return 1
}

token_sha=$(printf '%s' 'bench-client-token' | sha256sum | cut -d' ' -f1)
AUTH="Authorization: Bearer bench-client-token"

proxy_config() { # port max_bytes -> path
    local cfg=$RUN_DIR/proxy-$1.toml
    cat >"$cfg" <<EOF
[server]
listen = "127.0.0.1:$1"
public_url = "http://127.0.0.1:$1"
max_in_flight = 100000

[upstream]
base_url = "http://127.0.0.1:$BARE_LARGE"
token_env = "BENCH_UPSTREAM_TOKEN"
allow_plain_http = true
owners = ["acme"]
max_concurrency = 256
max_queue = 10000
pool_max_idle_per_host = 256

[quotas]
upstream_per_minute = 4000000000
hits_per_minute = 4000000000
max_in_flight = 100000

[cache]
max_bytes = $2
version_lists_ttl = "1h"

[[clients]]
name = "bench"
token_sha256 = "$token_sha"
EOF
    [[ -n ${PROXY_CONFIG_EXTRA:-} ]] && printf '%b\n' "$PROXY_CONFIG_EXTRA" >>"$cfg"
    BENCH_UPSTREAM_TOKEN=bench-upstream-token "$PROXY_BIN" check-config "$cfg" >/dev/null
    echo "$cfg"
}

start_proxy() { # port max_bytes workers(empty: tokio's default) -> sets STARTED_PID
    local cfg; cfg=$(proxy_config "$1" "$2")
    env ${3:+TOKIO_WORKER_THREADS=$3} BENCH_UPSTREAM_TOKEN=bench-upstream-token \
        "$RUN_DIR/ppx-keys-bench" serve --config "$cfg" >/dev/null 2>"$RUN_DIR/proxy-$1.err" &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    wait_http "http://127.0.0.1:$1/healthz" 10
}

start_bare() { # port keys
    "$KEYS_SERVER_BIN" --addr "127.0.0.1:$1" --keys "$2" --threads 1 2>"$RUN_DIR/bare-$1.err" &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    wait_http "http://127.0.0.1:$1/" 120
    log "$(cat "$RUN_DIR/bare-$1.err")"
}

metric() { # port name: the value of a metric line without labels
    curl -s --max-time 5 "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 == n { print $2 }'
}
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

fill() { # port from to
    local out=$RUN_DIR/fill-$1-$2-$3.txt t1 t0
    local done_file=$RUN_DIR/fill-$1-$2-$3.done
    : >"$done_file"
    t0=$(date +%s.%N)
    FROM=$2 TO=$3 PIPELINE=$PIPELINE THREADS=$FILL_THREADS DONE_FILE=$done_file \
        wrk -t"$FILL_THREADS" -c"$FILL_CONNS" -d"${FILL_MAX_SECS}s" --timeout 10s -s "$here/fill.lua" -H "$AUTH" \
        "http://127.0.0.1:$1/" >"$out" 2>&1 &
    WRK_PID=$!
    # each wrk thread stops itself when done and says so; wrk itself waits out -d unless told
    while kill -0 "$WRK_PID" 2>/dev/null && (( $(wc -l <"$done_file") < FILL_THREADS )); do sleep 0.05; done
    t1=$(date +%s.%N)
    kill -INT "$WRK_PID" 2>/dev/null || true
    wait "$WRK_PID" || true
    WRK_PID=''
    local line; line=$(grep '^WRK_FILL' "$out") || { log "fill failed: $(tail -3 "$out")"; return 1; }
    if ! grep -q 'err_status=0 ' <<<"$line"; then log "fill: non-2xx answers: $line"; return 1; fi
    log "filled keys $2..$(( $3 - 1 )) through :$1 in $(python3 -c "print(f'{$t1 - $t0:.1f} s, {($3 - $2) / ($t1 - $t0):.0f} keys/s')") ($line)"
}

check_alive() { # pid... : stop the run if a server went away (or stopped listening)
    local p
    for p in "$@"; do
        if ! kill -0 "$p" 2>/dev/null || ! ss -ltnp 2>/dev/null | grep -q "pid=$p,"; then
            log "ERROR: server pid $p exited or stopped listening ($(cat "$RUN_DIR"/*.err 2>/dev/null | tail -3))"
            exit 3
        fi
    done
}

pin_server_side() { taskset -a -p -c "$SERVER_CPU" "$1" >/dev/null; }

# ---- 1. servers and fills ----------------------------------------------------------
start_bare $BARE_LARGE "$KEYS_LARGE"
BARE_LARGE_PID=$STARTED_PID
start_bare $BARE_SMALL "$KEYS_SMALL"
BARE_SMALL_PID=$STARTED_PID
start_proxy $PROXY_SMALL $((1 << 30)) 1
PROXY_SMALL_PID=$STARTED_PID
start_proxy $PROXY_LARGE "$LARGE_MAX_BYTES" 1
PROXY_LARGE_PID=$STARTED_PID
log "up: bare_large $BARE_LARGE_PID, bare_small $BARE_SMALL_PID, proxy_small $PROXY_SMALL_PID, proxy_large $PROXY_LARGE_PID"

# the answers must be the same bytes through the proxy as from the bare server
probe=/orgs/acme/packages/container/p0/versions?per_page=1\&page=7
curl -s -H "$AUTH" -o "$RUN_DIR/probe-bare" "http://127.0.0.1:$BARE_LARGE$probe"
curl -s -H "$AUTH" -o "$RUN_DIR/probe-proxy" -D "$RUN_DIR/probe-proxy.headers" "http://127.0.0.1:$PROXY_LARGE$probe"
log "probe: bare $(stat -c %s "$RUN_DIR/probe-bare") bytes, proxy $(stat -c %s "$RUN_DIR/probe-proxy") bytes ($(grep -i '^cache-status' "$RUN_DIR/probe-proxy.headers" | tr -d '\r'))"

fill $PROXY_SMALL 0 "$KEYS_SMALL"
fill $PROXY_LARGE 0 "$KEYS_LARGE"
check_alive "${PIDS[@]}"
for pk in "$PROXY_SMALL:$KEYS_SMALL" "$PROXY_LARGE:$KEYS_LARGE"; do
    held=$(metric "${pk%%:*}" packages_proxy_cache_entries)
    # entries counts the probe's key too
    if (( ${held%.*} < ${pk#*:} )); then
        log "ERROR: proxy :${pk%%:*} holds $held entries, fewer than ${pk#*:} keys: hits would be misses"
        exit 3
    fi
done
for p in $PROXY_SMALL $PROXY_LARGE; do
    log "proxy :$p holds $(metric $p packages_proxy_cache_entries) entries, weigher $(metric $p packages_proxy_cache_bytes) bytes, RSS $(rss_kb "$( ((p == PROXY_SMALL)) && echo "$PROXY_SMALL_PID" || echo "$PROXY_LARGE_PID")") kB"
done
ENTRIES_SMALL=$(metric $PROXY_SMALL packages_proxy_cache_entries)
ENTRIES_LARGE=$(metric $PROXY_LARGE packages_proxy_cache_entries)
BYTES_LARGE=$(metric $PROXY_LARGE packages_proxy_cache_bytes)
RSS_LARGE=$(rss_kb "$PROXY_LARGE_PID")
for pid in "${PIDS[@]}"; do pin_server_side "$pid"; done
log "all servers pinned to cpu $SERVER_CPU, wrk to cpu $CLIENT_CPU"

# ---- 2. hits ---------------------------------------------------------------------------
declare -A PORT=([bare_small]=$BARE_SMALL [proxy_small]=$PROXY_SMALL [bare_large]=$BARE_LARGE [proxy_large]=$PROXY_LARGE)
declare -A KEYS=([bare_small]=$KEYS_SMALL [proxy_small]=$KEYS_SMALL [bare_large]=$KEYS_LARGE [proxy_large]=$KEYS_LARGE)
declare -A SPID=([bare_small]=$BARE_SMALL_PID [proxy_small]=$PROXY_SMALL_PID [bare_large]=$BARE_LARGE_PID [proxy_large]=$PROXY_LARGE_PID)
TARGETS=(bare_small proxy_small bare_large proxy_large)

ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
cpu_line() { grep -E '^cpu[01] ' /proc/stat | tr '\n' ' '; }

run_wrk() { # target seconds out seed
    KEYS=${KEYS[$1]} SEED=$4 taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"$2s" --timeout 2s \
        -s "$here/random.lua" -H "$AUTH" "http://127.0.0.1:${PORT[$1]}/" >"$3" 2>&1 &
    WRK_PID=$!
    wait "$WRK_PID"
    WRK_PID=''
}

printf 'round\ttarget\tkeys\trps\tp50_us\tp99_us\trequests\tnon2xx\tsock_errors\tsrv_us_per_req\tsrv_cpu_pct\twrk_cpu_pct\tcpu0_busy\tcpu1_busy\n' >"$RESULTS"
measure() { # round target
    local r=$1 t=$2 out=$RUN_DIR/wrk-$2-r$1.txt pid=${SPID[$2]}
    local k0 k1 s0 s1 w0 w1 c0 c1
    times >"$RUN_DIR/.t0"; k0=$(ticks "$pid"); s0=$(cpu_line); w0=$(date +%s.%N)
    run_wrk "$t" "$DURATION" "$out" "$r"
    k1=$(ticks "$pid"); s1=$(cpu_line); w1=$(date +%s.%N); times >"$RUN_DIR/.t1"
    c0=$(tail -1 "$RUN_DIR/.t0"); c1=$(tail -1 "$RUN_DIR/.t1")
    local line; line=$(grep '^WRK_RESULT' "$out") || { log "no WRK_RESULT: $(tail -3 "$out")"; return 1; }
    python3 - "$r" "$t" "${KEYS[$t]}" "$line" "$k0" "$k1" "$w0" "$w1" "$s0" "$s1" "$c0" "$c1" "$(getconf CLK_TCK)" >>"$RESULTS" <<'PY'
import re, sys
r, t, keys, line, k0, k1, w0, w1, s0, s1, c0, c1, hz = sys.argv[1:]
kv = dict(x.split("=") for x in line.split()[1:])
wall = float(w1) - float(w0)
req = int(kv["requests"])
srv = (int(k1) - int(k0)) / int(hz)
def cpus(s):
    p = s.split()
    return {p[i]: list(map(int, p[i + 1:i + 11])) for i in range(0, len(p), 11)}
a, b = cpus(s0), cpus(s1)
def busy(n):
    d = [y - x for x, y in zip(a[n], b[n])]
    tot = sum(d[:8]) or 1
    return 100.0 * (tot - d[3] - d[4]) / tot
def secs(l):
    return sum(int(m) * 60 + float(s) for m, s in re.findall(r"(\d+)m([\d.]+)s", l))
wrk = 100.0 * (secs(c1) - secs(c0)) / wall
errs = sum(int(kv[k]) for k in ("err_connect", "err_read", "err_write", "err_timeout"))
print("\t".join(map(str, [r, t, keys, kv["rps"], kv["p50_us"], kv["p99_us"], req, kv["err_status"], errs,
      f"{1e6 * srv / max(req, 1):.2f}", f"{100 * srv / wall:.0f}", f"{wrk:.0f}", f"{busy('cpu0'):.0f}", f"{busy('cpu1'):.0f}"])))
PY
    log "$(tail -1 "$RESULTS" | awk -F'\t' '{ printf "r%s %-12s %8.0f req/s  p50 %5d us  p99 %6d us  server %6.2f us/req  cpu%%: server %3s wrk %3s (cpu0 %3s cpu1 %3s)  non-2xx %s errors %s", $1, $2, $4, $5, $6, $10, $11, $12, $13, $14, $8, $9 }')"
}

for t in "${TARGETS[@]}"; do run_wrk "$t" "$WARMUP" "$RUN_DIR/warmup-$t.txt" 0; done
log "warm-up done"
entries0_small=$(metric $PROXY_SMALL packages_proxy_cache_entries)
entries0_large=$(metric $PROXY_LARGE packages_proxy_cache_entries)
for ((r = 1; r <= ROUNDS; r++)); do
    n=${#TARGETS[@]}
    for ((i = 0; i < n; i++)); do measure "$r" "${TARGETS[$(( (i + r - 1) % n ))]}"; done
    check_alive "${PIDS[@]}"
done
log "entries after the hit runs: proxy_small $(metric $PROXY_SMALL packages_proxy_cache_entries) (was $entries0_small), proxy_large $(metric $PROXY_LARGE packages_proxy_cache_entries) (was $entries0_large)"

python3 - "$RESULTS" "$KEYS_SMALL" "$KEYS_LARGE" <<'PY' | tee "$RUN_DIR/report.txt"
import csv, statistics, sys
path, small, large = sys.argv[1], sys.argv[2], sys.argv[3]
rows = list(csv.DictReader(open(path), delimiter="\t"))
med = lambda t, f: statistics.median(float(r[f]) for r in rows if r["target"] == t)
print()
print(f"{'target':<12} {'keys':>8} {'req/s':>9} {'p50 us':>7} {'p99 us':>7} {'srv us/req':>10} {'srv cpu%':>8} {'wrk cpu%':>8}  (medians of {len(rows) // 4} rounds)")
for t in ("bare_small", "proxy_small", "bare_large", "proxy_large"):
    keys = small if t.endswith("small") else large
    print(f"{t:<12} {keys:>8} {med(t, 'rps'):>9.0f} {med(t, 'p50_us'):>7.0f} {med(t, 'p99_us'):>7.0f} {med(t, 'srv_us_per_req'):>10.2f} {med(t, 'srv_cpu_pct'):>8.0f} {med(t, 'wrk_cpu_pct'):>8.0f}")
bad = [r for r in rows if int(r["non2xx"]) or int(r["sock_errors"])]
if bad:
    print(f"(!) {len(bad)} points had non-2xx answers or socket errors")
ps, bs, pl, bl = (med(t, "rps") for t in ("proxy_small", "bare_small", "proxy_large", "bare_large"))
cps, cbs, cpl, cbl = (med(t, "srv_us_per_req") for t in ("proxy_small", "bare_small", "proxy_large", "bare_large"))
print()
print(f"proxy/bare req/s:  {small} keys {ps / bs:.2f}   {large} keys {pl / bl:.2f}   large/small {(pl / bl) / (ps / bs):.2f}")
print(f"bare/proxy cost:   {small} keys {cbs / cps:.2f}   {large} keys {cbl / cpl:.2f}   large/small {(cbl / cpl) / (cbs / cps):.2f}")
print(f"proxy alone, {large}/{small} keys: req/s {pl / ps:.2f}, cost per hit {cpl / cps:.2f}x;  bare alone: req/s {bl / bs:.2f}, cost {cbl / cbs:.2f}x")
# per round, so the spread shows
for r in sorted({x["round"] for x in rows}, key=int):
    g = {x["target"]: x for x in rows if x["round"] == r}
    f = lambda t, k: float(g[t][k])
    print(f"  round {r}: proxy/bare req/s {f('proxy_small', 'rps') / f('bare_small', 'rps'):.2f} -> {f('proxy_large', 'rps') / f('bare_large', 'rps'):.2f}, "
          f"large/small {(f('proxy_large', 'rps') / f('bare_large', 'rps')) / (f('proxy_small', 'rps') / f('bare_small', 'rps')):.2f}")
PY
log "proxy_large before the hit runs: $ENTRIES_LARGE entries, weigher $BYTES_LARGE bytes, RSS $RSS_LARGE kB; proxy_small: $ENTRIES_SMALL entries"

# ---- 3. RSS against cache.max_bytes ------------------------------------------------------
if [[ $RSS == 1 ]]; then
    kill -KILL "$PROXY_SMALL_PID" "$PROXY_LARGE_PID" "$BARE_SMALL_PID"
    wait "$PROXY_SMALL_PID" "$PROXY_LARGE_PID" "$BARE_SMALL_PID" 2>/dev/null || true
    taskset -a -p 0xffffffff "$BARE_LARGE_PID" >/dev/null 2>&1 || taskset -a -p -c 0-$(( $(nproc) - 1 )) "$BARE_LARGE_PID" >/dev/null
    start_proxy $PROXY_RSS "$RSS_MAX_BYTES" ""
    PROXY_RSS_PID=$STARTED_PID
    KEYS=1 wrk -t1 -c"$CONNS" -d2s -s "$here/random.lua" -H "$AUTH" "http://127.0.0.1:$PROXY_RSS/" >"$RUN_DIR/rss-warm.txt" 2>&1
    base=$(rss_kb "$PROXY_RSS_PID")
    log "RSS proxy (max_bytes $RSS_MAX_BYTES, default workers, unpinned): empty-cache baseline $base kB after 2 s of hits on one key"
    fill $PROXY_RSS 0 "$RSS_KEYS"
    check_alive "$PROXY_RSS_PID"
    rss_report() {
        local rss; rss=$(rss_kb "$PROXY_RSS_PID")
        local entries bytes evicted
        entries=$(metric $PROXY_RSS packages_proxy_cache_entries)
        bytes=$(metric $PROXY_RSS packages_proxy_cache_bytes)
        evicted=$(metric $PROXY_RSS packages_proxy_cache_evictions_total)
        python3 -c "
rss, base, mx, entries, wb, ev = $rss, $base, $RSS_MAX_BYTES, $entries, $bytes, ${evicted:-0}
print(f'RSS $1: {rss} kB with {entries:.0f} entries, weigher {wb:.0f} bytes ({wb / max(entries, 1):.0f} per entry), {ev:.0f} evicted; '
      f'(RSS - baseline) / max_bytes = {(rss - base) * 1024 / mx:.2f}; RSS / (1.1 x max_bytes + baseline) = {rss * 1024 / (1.1 * mx + base * 1024):.2f}; '
      f'(RSS - baseline) per entry {(rss - base) * 1024 / max(entries, 1):.0f} bytes')" | tee -a "$RUN_DIR/report.txt"
    }
    rss_report "after the fill of $RSS_KEYS keys"
    for pass in 1 2; do
        KEYS=$RSS_KEYS SEED=$pass wrk -t1 -c"$CONNS" -d"${RSS_SECS}s" --timeout 5s -s "$here/random.lua" -H "$AUTH" \
            "http://127.0.0.1:$PROXY_RSS/" >"$RUN_DIR/rss-random-$pass.txt" 2>&1
        rss_report "after $((pass * RSS_SECS)) s of random requests over $RSS_KEYS keys ($(grep -o 'requests=[0-9]*' "$RUN_DIR/rss-random-$pass.txt"))"
    done
fi
log "done; uptime:$(uptime | sed 's/.*load/ load/')"

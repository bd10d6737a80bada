-- wrk script of benches/keys.sh: each request asks for one of KEYS keys picked uniformly at random
-- (key i: /orgs/acme/packages/container/p<i/10000>/versions?per_page=1&page=<i%10000+1>, as
-- benches/keys/server.rs stores them). The request line is put together per request from a
-- prefix and the headers formatted once: one math.random, some arithmetic and one string concat
-- on wrk's core, the same for 1,000 and 1,000,000 keys, and no start-up cost that would eat into
-- wrk's -d window.
-- Environment: KEYS (required), SEED (default 1).
local n = tonumber(os.getenv("KEYS") or error("KEYS not set"))
local head, tail, prefix = nil, nil, {}

function init(args)
  math.randomseed(tonumber(os.getenv("SEED") or "1"))
end

function request()
  if head == nil then
    -- "GET " .. path .. " HTTP/1.1\r\n<headers>\r\n\r\n", split around a placeholder path
    local sample = wrk.format(nil, "/@")
    local at = string.find(sample, "/@", 1, true)
    head, tail = string.sub(sample, 1, at - 1), string.sub(sample, at + 2)
  end
  local i = math.random(n) - 1
  local package = math.floor(i / 10000)
  local p = prefix[package]
  if p == nil then
    p = "/orgs/acme/packages/container/p" .. package .. "/versions?per_page=1&page="
    prefix[package] = p
  end
  return head .. p .. (i % 10000 + 1) .. tail
end

-- One machine-readable line at the end (as ../shared/bench/wrk/report.lua prints).
done = function(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    "WRK_RESULT requests=%d duration_us=%d bytes=%d rps=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d " ..
    "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
    summary.requests, summary.duration, summary.bytes, summary.requests / secs,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end

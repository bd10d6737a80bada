-- wrk script of benches/keys.sh: asks for keys FROM .. TO-1 once each, in order, over all of
-- wrk's connections (a miss each through the proxy: it fetches and stores them), PIPELINE requests
-- per write. Thread t of T takes every T-th batch. When a thread has had an answer for every batch
-- it sent it stops; until then, past TO it wraps around to FROM (hits, so nothing is left
-- in flight half done). Non-200 answers count as wrk's status errors: the script checks them.
-- Environment: FROM (default 0), TO (required), PIPELINE (default 1), THREADS (wrk's -t),
-- DONE_FILE (each thread appends a line to it when it is done).
local from = tonumber(os.getenv("FROM") or "0")
local to = tonumber(os.getenv("TO") or error("TO not set"))
local depth = tonumber(os.getenv("PIPELINE") or "1")
local threads = {}

local function target(i)
  return string.format("/orgs/acme/packages/container/p%d/versions?per_page=1&page=%d",
    math.floor(i / 10000), i % 10000 + 1)
end

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

tid = 0 -- set per thread by setup()
local nthreads, next_i, mine, answered = 1, 0, 0, 0

function init(args)
  nthreads = tonumber(os.getenv("THREADS") or "1")
  next_i = from + tid * depth
  -- batches of `depth` keys starting at from + tid*depth, every nthreads*depth keys
  local span = to - from
  local stride = nthreads * depth
  mine = 0
  for start = tid * depth, span - 1, stride do
    mine = mine + math.min(depth, span - start)
  end
end

function request()
  local parts = {}
  for k = 1, depth do
    local i = next_i + k - 1
    if i >= to then i = from + (i - from) % (to - from) end
    parts[k] = wrk.format(nil, target(i))
  end
  next_i = next_i + nthreads * depth
  return table.concat(parts)
end

function response(status, headers, body)
  answered = answered + 1
  -- every key of this thread answered, plus 1,024 answers of slack (wrapped hits) so that no
  -- slow miss is cut off: stop.
  if answered == mine + 1024 then
    -- wrk's main thread sleeps out -d whatever its threads do: tell keys.sh, which sends wrk
    -- SIGINT (wrk then reports and exits) once every thread has written its line.
    local f = assert(io.open(os.getenv("DONE_FILE") or error("DONE_FILE not set"), "a"))
    f:write("thread ", tid, " answered ", answered, "\n")
    f:close()
    wrk.thread:stop()
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK_FILL requests=%d duration_us=%d err_status=%d err_connect=%d err_read=%d err_timeout=%d\n",
    summary.requests, summary.duration, e.status, e.connect, e.read, e.timeout))
end

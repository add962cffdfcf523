-- Cycle through pre-built requests and report one JSON line for bench/run.py.
--
--   wrk -t T -c C -d D --latency -s bench/lua/cycle.lua URL -- FILE T MODE
--
-- FILE holds one request per line: METHOD<TAB>PATH<TAB>TOKEN<TAB>BODY (TOKEN
-- and BODY may be empty; BODY is one line of JSON). Thread k of T keeps the
-- lines k, k+T, k+2T, ... so that each request belongs to exactly one thread
-- and its order within the thread is the file's order (bench/run.py relies on
-- it for status updates that alternate between two values).
-- MODE "loop" starts again at the top; MODE "once" sends every line at most
-- once (each create body is a new referral) and then stops the thread, while
-- any request already asked for goes to the liveness probe, which is not
-- counted.
-- Every response status is counted: done() prints
--   BENCH_JSON {...}
-- with wrk's totals, latency percentiles (microseconds) and the status counts.

local threads = {}
local thread_count = 0

function setup(thread)
  thread:set("tid", thread_count)
  thread_count = thread_count + 1
  table.insert(threads, thread)
end

local reqs = {}
local n = 0
local i = 0
local once = false
local idle = nil

statuses = {}
exhausted = false

function init(args)
  local file = args[1]
  local nthreads = tonumber(args[2]) or 1
  once = args[3] == "once"
  local k = 0
  for line in io.lines(file) do
    if k % nthreads == tid then
      local method, path, token, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
      if method == nil then
        error("malformed request line " .. (k + 1) .. " in " .. file)
      end
      local headers = {}
      if token ~= "" then
        headers["Authorization"] = "Bearer " .. token
      end
      if body == "" then
        body = nil
      else
        headers["Content-Type"] = "application/json"
      end
      n = n + 1
      reqs[n] = wrk.format(method, path, headers, body)
    end
    k = k + 1
  end
  idle = wrk.format("GET", "/health/live", {}, nil)
end

function request()
  i = i + 1
  if i > n then
    if once then
      exhausted = true
      wrk.thread:stop()
      return idle
    end
    i = 1
  end
  return reqs[i]
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  local any_exhausted = false
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    if s then
      for code, c in pairs(s) do
        counts[code] = (counts[code] or 0) + c
      end
    end
    if t:get("exhausted") then
      any_exhausted = true
    end
  end
  local parts = {}
  for code, c in pairs(counts) do
    parts[#parts + 1] = string.format('"%d":%d', code, c)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"duration_us":%d,"requests":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p95":%d,"p99":%d},' ..
    '"statuses":{%s},"exhausted":%s}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(95),
    latency:percentile(99),
    table.concat(parts, ","), tostring(any_exhausted)))
end

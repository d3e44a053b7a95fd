-- wrk script for bench/dataplane.py and bench/translation.py: POST a JSON body, print the
-- result as one JSON line.
--
-- Environment (set by the runner):
--   BENCH_BODY     the request body (JSON text)
--   BENCH_HEADERS  extra request headers, one "Name: value" per line (e.g. the Authorization
--                  header, or x-api-key and anthropic-version for the Anthropic format)
--
-- Every response with a status >= 300 is counted by status, and the first such body is kept
-- (truncated), so errors under load are reported precisely instead of as one wrk number.

wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY") or "{}"
wrk.headers["Content-Type"] = "application/json"
for line in string.gmatch(os.getenv("BENCH_HEADERS") or "", "[^\n]+") do
   local name, value = string.match(line, "^([^:]+):%s*(.*)$")
   if name then
      wrk.headers[name] = value
   end
end

-- Per-thread state (each wrk thread has its own Lua state).
bad = {}
sample = nil

function response(status, headers, body)
   if status >= 300 then
      bad[status] = (bad[status] or 0) + 1
      if sample == nil then
         sample = string.format("HTTP %d: %s", status, string.sub(body or "", 1, 500))
      end
   end
end

-- Main state: collect the threads so done() can read their counters.
local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

local function quote(text)
   local escaped = text:gsub('[%c"\\]', function(c)
      return string.format("\\u%04x", string.byte(c))
   end)
   return '"' .. escaped .. '"'
end

function done(summary, latency, requests)
   local statuses = {}
   local first_sample = nil
   for _, thread in ipairs(threads) do
      for status, count in pairs(thread:get("bad") or {}) do
         statuses[status] = (statuses[status] or 0) + count
      end
      first_sample = first_sample or thread:get("sample")
   end
   local status_items = {}
   for status, count in pairs(statuses) do
      table.insert(status_items, string.format('"%d": %d', status, count))
   end
   local e = summary.errors
   local fields = {
      string.format('"requests": %d', summary.requests),
      string.format('"duration_us": %d', summary.duration),
      string.format('"bytes": %d', summary.bytes),
      string.format(
         '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}',
         e.connect, e.read, e.write, e.status, e.timeout
      ),
      '"bad_statuses": {' .. table.concat(status_items, ", ") .. "}",
      '"sample_error": ' .. (first_sample and quote(first_sample) or "null"),
      string.format(
         '"latency_us": {"min": %d, "mean": %.1f, "stdev": %.1f, "max": %d, '
            .. '"p50": %d, "p90": %d, "p99": %d, "p99_9": %d}',
         latency.min, latency.mean, latency.stdev, latency.max,
         latency:percentile(50), latency:percentile(90),
         latency:percentile(99), latency:percentile(99.9)
      ),
   }
   io.write("BENCH_JSON {" .. table.concat(fields, ", ") .. "}\n")
end

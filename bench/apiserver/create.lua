-- wrk script: POST a new ~500-byte ConfigMap per request, each with a unique name.
-- Usage: wrk -t1 -c16 -d3s -s create.lua URL -- <name-prefix> <collection-path>
-- Prints one line "RESULT requests=N duration_us=N status_errors=N socket_errors=N p50_us=N p99_us=N" at the end.

local counter = 0
local prefix = "c"
local path = "/api/v1/namespaces/default/configmaps"
local payload = string.rep("x", 400)
local threads = {}

function setup(thread)
   thread:set("tid", #threads)
   table.insert(threads, thread)
end

function init(args)
   prefix = (args[1] or "c") .. "-t" .. tostring(tid or 0)
   path = args[2] or path
end

function request()
   counter = counter + 1
   local body = '{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"' .. prefix .. "-" .. counter
      .. '"},"data":{"payload":"' .. payload .. '"}}'
   return wrk.format("POST", path, {["Content-Type"] = "application/json"}, body)
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "RESULT requests=%d duration_us=%d status_errors=%d socket_errors=%d p50_us=%d p99_us=%d\n",
      summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
      latency:percentile(50), latency:percentile(99)))
end

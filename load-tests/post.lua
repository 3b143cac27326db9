-- wrk script for load-tests/run.sh: POST a fixed JSON body, then print one machine-readable
-- summary line ("@@WRK {...}") that load-tests/report.py parses. wrk's own text output
-- (--latency) stays above it for humans.
--
-- Environment: BODY (the request body, required), AUTH (optional bearer token).

local body = os.getenv("BODY")
if body == nil or body == "" then
  io.stderr:write("post.lua: BODY is not set\n")
  os.exit(2)
end

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("AUTH")
if auth ~= nil and auth ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. auth
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '@@WRK {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"stdev":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
end

-- wrk script for scripts/bench.mjs: replays pre-signed requests and checks every response body.
--
--   wrk -t T -c C -d S -s bench-wrk.lua URL -- <requests prefix> <expected body file> <path>
--
-- Thread n reads "<prefix>.<n>": one request per line, "<Authorization header>\t<JSON body>".
-- Each line is sent once (a Hawk nonce is good for one request); a thread that runs out stops
-- and the run reports `exhausted`, which the bench treats as a failure (size the files larger).
-- A response counts as ok only with status 200 and a body byte-for-byte equal to the expected
-- file: every ciphertext of a phase decrypts to one plaintext, so no request/response pairing is
-- needed. `done` prints one line "BENCH-WRK {json}" with the counts and latency percentiles.

local threads = {}
local count = 0

function setup(thread)
  thread:set("id", count)
  count = count + 1
  table.insert(threads, thread)
end

function init(args)
  local prefix, expected_file, path = args[1], args[2], args[3]
  local f = assert(io.open(expected_file, "rb"))
  expected = f:read("*a")
  f:close()
  reqs = {}
  for line in io.lines(prefix .. "." .. id) do
    local auth, body = line:match("^([^\t]*)\t(.*)$")
    reqs[#reqs + 1] = wrk.format("POST", path, { ["Authorization"] = auth, ["Content-Type"] = "application/json" }, body)
  end
  loaded = #reqs
  nextreq = 1
  ok = 0
  mismatches = 0
  exhausted = 0
  sample = ""
end

function request()
  local r = reqs[nextreq]
  if r == nil then
    -- Never resend a signed request: stop this thread (the bench fails the phase); wrk still
    -- wants a request back, so hand it one no server accepts.
    exhausted = exhausted + 1
    wrk.thread:stop()
    return wrk.format("GET", "/bench-wrk-exhausted")
  end
  nextreq = nextreq + 1
  return r
end

function response(status, headers, body)
  if status == 200 and body == expected then
    ok = ok + 1
  else
    mismatches = mismatches + 1
    if sample == "" then
      -- Printable characters only: it goes into a JSON string.
      sample = (status .. " " .. (body or "")):sub(1, 160):gsub('"', "'"):gsub("[^%w%s%.,:;_%-/=+'{}]", "?")
    end
  end
end

function done(summary, latency, requests)
  local t = { ok = 0, mismatches = 0, exhausted = 0, loaded = 0, sent = 0 }
  local first = ""
  for _, thread in ipairs(threads) do
    t.ok = t.ok + thread:get("ok")
    t.mismatches = t.mismatches + thread:get("mismatches")
    t.exhausted = t.exhausted + thread:get("exhausted")
    t.loaded = t.loaded + thread:get("loaded")
    t.sent = t.sent + thread:get("nextreq") - 1
    if first == "" then first = thread:get("sample") end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH-WRK {"ok":%d,"mismatches":%d,"exhausted":%d,"loaded":%d,"sent":%d,"requests":%d,"durationUs":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latencyUs":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f},"sample":"%s"}\n',
    t.ok, t.mismatches, t.exhausted, t.loaded, t.sent, summary.requests, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean, first))
end

-- wrk script: count the responses outside 2xx (wrk itself only counts non-2xx-or-3xx,
-- and a 3xx redirect would be a failure here), summed over threads in done().
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  responses = 0
  non2xx = 0
end

function response(status, headers, body)
  responses = responses + 1
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local total, bad = 0, 0
  for _, thread in ipairs(threads) do
    total = total + thread:get("responses")
    bad = bad + thread:get("non2xx")
  end
  io.write(string.format("BENCH responses=%d non2xx=%d\n", total, bad))
end

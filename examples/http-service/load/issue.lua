-- wrk script: every request POSTs {"user": "user-N"} with N random in 1..USERS, so users
-- click several times, to the issue URL given to wrk. At the end it prints the answers by
-- status and how many coupons were issued, and checks that no seq was issued twice.
--
--   wrk -t2 -c2000 -d10s --timeout 10s -s examples/http-service/load/issue.lua \
--       http://127.0.0.1:8080/coupons/sale/issue -- 20000
--
-- Arguments after `--`: USERS (default 20000), and optionally a file to write the results to
-- as JSON (statuses, issued user/seq pairs, wrk's latency percentiles), which `coupon-bench
-- http` and the tests read.

local threads = {}

function setup(thread)
   thread:set("id", #threads + 1)
   table.insert(threads, thread)
end

function init(args)
   users = tonumber(args[1]) or 20000
   report_path = args[2]
   statuses = {}
   issued = {}
   math.randomseed(os.time() * 1000 + id)
   -- One request per user, built once: building them per call costs wrk more CPU than the
   -- service spends answering.
   requests = {}
   local headers = { ["Content-Type"] = "application/json" }
   for user = 1, users do
      requests[user] = wrk.format("POST", nil, headers, '{"user":"user-' .. user .. '"}')
   end
end

function request()
   return requests[math.random(users)]
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   if status == 201 then
      -- {"coupon":…,"user":"user-7","outcome":"issued","seq":12}
      local user = body:match('"user":"([^"]*)"')
      local seq = body:match('"seq":(%d+)')
      issued[#issued + 1] = user .. " " .. seq
   end
end

function done(summary, latency, requests)
   local statuses, issued = {}, {}
   for _, thread in ipairs(threads) do
      for status, count in pairs(thread:get("statuses")) do
         statuses[status] = (statuses[status] or 0) + count
      end
      for _, line in ipairs(thread:get("issued")) do
         issued[#issued + 1] = line
      end
   end

   local seqs, twice = {}, 0
   for _, line in ipairs(issued) do
      local seq = line:match(" (%d+)$")
      if seqs[seq] then twice = twice + 1 end
      seqs[seq] = true
   end
   local codes = {}
   for status in pairs(statuses) do codes[#codes + 1] = status end
   table.sort(codes)
   io.write("answers by status:")
   for _, status in ipairs(codes) do io.write(string.format(" %d=%d", status, statuses[status])) end
   io.write(string.format("\nissued: %d coupons, seqs issued twice: %d\n", #issued, twice))

   local report_path = threads[1]:get("report_path")
   if report_path then
      local file = assert(io.open(report_path, "w"))
      local parts = {}
      for _, status in ipairs(codes) do parts[#parts + 1] = string.format('"%d":%d', status, statuses[status]) end
      local pairs_ = {}
      for _, line in ipairs(issued) do
         local user, seq = line:match("^(.*) (%d+)$")
         pairs_[#pairs_ + 1] = string.format('["%s",%s]', user, seq)
      end
      local e = summary.errors
      file:write(string.format(
         '{"requests":%d,"duration_us":%d,"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},' ..
         '"statuses":{%s},"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f},"issued":[%s]}\n',
         summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout,
         table.concat(parts, ","),
         latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
         latency.max, latency.mean, table.concat(pairs_, ",")))
      file:close()
   end
end

-- wrk script of the order API phase (bench/order_api.py): POST /orders, the same body as
-- order_body() there, with an Idempotency-Key unique per request (thread number + counter +
-- a per-run random prefix, so two runs against one database never replay each other's orders).
local threads = 0
local body = '{"userId":"bench-user-1","customerEmail":"bench1@example.com","items":[' ..
  '{"sku":"BENCH-SKU-1","quantity":2,"unitPrice":"12.50"},' ..
  '{"sku":"BENCH-SKU-2","quantity":1,"unitPrice":"3.99"}]}'

function setup(thread)
  thread:set("thread_id", threads)
  threads = threads + 1
end

function init(args)
  math.randomseed(os.time() + thread_id)
  prefix = string.format("wrk-%08x-%d-", math.random(0, 0x7fffffff), thread_id)
  counter = 0
end

function request()
  counter = counter + 1
  return wrk.format("POST", "/orders", {
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = prefix .. counter,
  }, body)
end

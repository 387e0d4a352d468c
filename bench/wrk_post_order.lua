-- wrk script of the order API phase (bench/order_api.py): POST /orders, the same body as
-- order_body() there, with an Idempotency-Key unique per request (thread number + counter +
-- a per-run random prefix, so two runs against one database never replay each other's orders),
-- and the bearer token of its customer (bench-user-1, order_api.WRK_USER), passed as the script's
-- first argument (`wrk ... -s wrk_post_order.lua URL -- TOKEN`).
local threads = 0
local body = '{"userId":"bench-user-1","customerEmail":"bench1@example.com","items":[' ..
  '{"sku":"BENCH-SKU-1","quantity":2,"unitPrice":"12.50"},' ..
  '{"sku":"BENCH-SKU-2","quantity":1,"unitPrice":"3.99"}]}'

function setup(thread)
  thread:set("thread_id", threads)
  threads = threads + 1
end

function init(args)
  authorization = "Bearer " .. args[1]
  math.randomseed(os.time() + thread_id)
  prefix = string.format("wrk-%08x-%d-", math.random(0, 0x7fffffff), thread_id)
  counter = 0
end

function request()
  counter = counter + 1
  return wrk.format("POST", "/orders", {
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = prefix .. counter,
    ["Authorization"] = authorization,
  }, body)
end

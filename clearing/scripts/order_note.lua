-- order_note.lua: a shop order's purchase, noted in the ledger stream for the book of
-- record's dashboards (docs/ledger.md "Order notes", docs/dashboards.md). Moves no value.
--
-- KEYS[1]  {shop}:order:<id>   the order's record (clearing/shops.py), on the shop's slot
-- A        shop, o (the order id), tag (the shop's tag)
-- The buyer, the spend and the state come from the order's record, as clearing/shops.py left
-- it: an order with no buyer and spend (refunded before it was paid) was no purchase and
-- notes nothing. Its state noted is `paid` (paid, below_minimum) or `refunded`; `noted`
-- remembers the last one written, so a call again writes nothing, and a refund, once noted,
-- is never followed by a `paid` note.
-- Returns msgpack {noted = the state written, or '' when nothing was}, or {err = CORRUPT}
-- (a spend that is no whole number, a state of no known order).

local key = KEYS[1]
local got = redis.call('HMGET', key, 'buyer', 'spend', 'state', 'noted')
local buyer, spend, state, noted = got[1], got[2], got[3], got[4]
if not buyer or not spend then
  return reply({noted = ''})
end
local amount = string.match(spend, '^%d+$') and tonumber(spend)
if not amount or amount > MAX_COUNTER or (state ~= 'paid' and state ~= 'below_minimum' and state ~= 'refunded') then
  return refuse('CORRUPT')
end
local now_state = state == 'refunded' and 'refunded' or 'paid'
if noted == now_state or noted == 'refunded' then
  return reply({noted = ''})
end
redis.call('HSET', key, 'noted', now_state)
order_record(A.tag, A.shop, A.o, buyer, amount, now_state)
return reply({noted = now_state})

-- redeem_frame.lua: a user redeems the limited-time avatar frame of the running festival.
--
-- KEYS[1]  {U}:inv (item -> expiry ms)
-- A        u, tag, kind (the card kind the price is paid in), price (frame_price_units),
--          festival ({id, end_ms, frame}: the festival whose window holds now and offers a
--          frame, from the caller's settings; nil when none: NO_FESTIVAL)
--
-- Once per user and festival; the price (may be 0) moves from the user's balance to the
-- slot's consumed total. The item expires with the festival.
-- Returns msgpack {item, frame, expires_at_ms} or {err = UNKNOWN_USER | NO_FESTIVAL |
-- ALREADY_REDEEMED | INSUFFICIENT_BALANCE}.

if redis.call('EXISTS', ukey(A.u, 'user')) == 0 then
  return refuse('UNKNOWN_USER')
end
local f = A.festival
if not f then
  return refuse('NO_FESTIVAL')
end
local item = 'frame:' .. f.id
if redis.call('HEXISTS', KEYS[1], item) == 1 then
  return refuse('ALREADY_REDEEMED')
end
if num(redis.call('HGET', ukey(A.u, 'bal'), A.kind)) < A.price then
  return refuse('INSUFFICIENT_BALANCE')
end
if A.price > 0 and corrupt({{ukey(A.u, 'bal'), A.kind}, {tkey(A.tag, 'tot'), 'consumed:' .. A.kind}}) then
  return refuse('CORRUPT')
end
if A.price > 0 then
  consume_units(A.u, A.tag, A.kind, A.price, item)
end
redis.call('HSET', KEYS[1], item, f.end_ms)
return reply({item = item, frame = f.frame, expires_at_ms = f.end_ms})

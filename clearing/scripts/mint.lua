-- mint.lua: new cards for a user: the balance and the slot's minted total move together.
--
-- KEYS[1]  {U}:bal
-- A        u, tag, kind, amount (minor units), ceiling (2^53 - 1)
-- Returns msgpack {bal, held} or {err = UNKNOWN_USER | BAD_QUANTITY (a total would pass the
-- ceiling, beyond which Lua's doubles stop counting every unit)}.

local bal = KEYS[1]
if redis.call('EXISTS', ukey(A.u, 'user')) == 0 then
  return refuse('UNKNOWN_USER')
end
if corrupt({{bal, A.kind}, {tkey(A.tag, 'tot'), 'minted:' .. A.kind}}) then
  return refuse('CORRUPT')
end
local minted = num(redis.call('HGET', tkey(A.tag, 'tot'), 'minted:' .. A.kind))
if num(redis.call('HGET', bal, A.kind)) + A.amount > A.ceiling or minted + A.amount > A.ceiling then
  return refuse('BAD_QUANTITY')
end
mint_units(A.u, A.tag, A.kind, A.amount)
return reply({bal = redis.call('HGETALL', bal), held = redis.call('HGETALL', ukey(A.u, 'held'))})

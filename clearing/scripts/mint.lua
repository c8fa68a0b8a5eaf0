-- mint.lua: create cards out of nothing into a user's available balance (task rewards,
-- purchases, admin grants). The only operation that changes the total of a kind.
--
-- KEYS[1]  the user's balance hash ({p}:bal:<user_id>)
-- ARGV[1..7] common header (lib.lua)
-- ARGV[8]  user_id   ARGV[9] kind   ARGV[10] amount in minor units (> 0)
-- ARGV[11] the largest total allowed (2^53 - 1: beyond it Lua's doubles lose units)
--
-- Returns msgpack {bal = balance hash, held = held hash} (HGETALL lists) or
-- {err = UNKNOWN_USER | BAD_QUANTITY}, or a CORRUPT error (nothing written) when the
-- balance or the minted total holds no whole number.
-- Invariants kept: minted[kind] and bal[user][kind] grow by the same amount, so
-- minted == available + holds + consumed holds after it as before.

local bal_key = KEYS[1]
local user_id, kind = ARGV[8], ARGV[9]
local amount, ceiling = tonumber(ARGV[10]), tonumber(ARGV[11])
if redis.call('EXISTS', key('user', user_id)) == 0 then
  return refuse('UNKNOWN_USER')
end
local balance = whole(redis.call('HGET', bal_key, kind) or 0)
local minted = whole(redis.call('HGET', key('minted'), kind) or 0)
if not balance or not minted then
  return corrupt(not balance and bal_key or key('minted'))
end
if balance + amount > ceiling or minted + amount > ceiling then
  return refuse('BAD_QUANTITY')
end
redis.call('HINCRBY', bal_key, kind, amount)
redis.call('HINCRBY', key('minted'), kind, amount)
return reply({bal = redis.call('HGETALL', bal_key), held = redis.call('HGETALL', key('held', user_id))})

-- expire_due.lua: expire every pending gift whose confirm window has passed.
--
-- KEYS[1]  the pending queue ({p}:pending, zset gift id -> expires_at_ms)
-- ARGV[1..7] common header (lib.lua)
-- ARGV[8]  limit: at most this many gifts per call (bounds the time Redis is blocked)
--
-- Returns msgpack {gifts = [record, ...]}: the gifts this call expired.
--
-- Invariants kept: a gift expires when now >= expires_at_ms, the same test resolve.lua
-- applies, so a sweeper and a late accept agree; each gift is checked to be pending before
-- finish() writes it, and the whole batch is one script, so sweepers racing on several
-- processes never refund twice. An id in the queue whose gift is gone or no longer pending
-- is dropped from the queue: left there it would stay at the head and stall every sweep.

local queue = KEYS[1]
local finish = gift_finisher()
local limit = tonumber(ARGV[8])

local expired = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', queue, '-inf', ARGV[2], 'LIMIT', 0, limit)) do
  local gift_key = key('gift', id)
  local flat = redis.call('HGETALL', gift_key)
  local g, day = gift_map(id, flat)
  if g.state == 'pending' then
    expired[#expired + 1] = finish(gift_key, g, day, 'expired')
  else
    redis.call('ZREM', queue, id)
  end
end
return reply({gifts = expired})

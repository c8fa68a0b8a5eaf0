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
-- is dropped from the queue: left there it would stay at the head and stall every sweep. A
-- pending gift that cannot be finished (its record is not well_formed, or a ledger counter
-- its refund must change holds no whole number) is skipped and stays queued, so the money
-- it holds stays accounted for and the invariant check reports it; the sweep reads past it
-- (it reads at most 2 * limit ids, so the time it blocks Redis stays bounded), so a few
-- broken gifts never stall the others.

local queue = KEYS[1]
local plan_finish, finish = gift_finisher()
local limit = tonumber(ARGV[8])

local expired, handled, skipped = {}, 0, 0
while handled < limit and handled + skipped < 2 * limit do
  -- skipped gifts stay at the head of what is due; everything else read leaves the queue
  local ids = redis.call('ZRANGEBYSCORE', queue, '-inf', ARGV[2], 'LIMIT', skipped, limit - handled)
  if #ids == 0 then
    break
  end
  for _, id in ipairs(ids) do
    local gift_key = key('gift', id)
    local g, day, numbers_ok = gift_map(id, redis.call('HGETALL', gift_key))
    if g.state ~= 'pending' then
      redis.call('ZREM', queue, id)
      handled = handled + 1
    else
      -- every check for this gift before its first write
      local plan = well_formed(g, numbers_ok) and plan_finish(g, day, 'expired')
      if plan then
        expired[#expired + 1] = finish(gift_key, plan)
        handled = handled + 1
      else
        skipped = skipped + 1
      end
    end
  end
end
return reply({gifts = expired})

-- pending_for.lua (read only): the offers still waiting for a user's answer.
--
-- KEYS[1]  the user's inbox ({p}:inbox:<user>, zset gift id -> expires_at_ms)
-- ARGV[1..7] common header (lib.lua)
--
-- Returns msgpack {gifts = [record, ...]}: pending gifts with expires_at_ms > now, soonest
-- expiry first. One script so the inbox and the gift hashes are read at one instant. A
-- record that is not well_formed is left out (nothing can answer it; the invariant check
-- reports it).

local gifts = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[2], '+inf')) do
  local g, _, numbers_ok = gift_map(id, redis.call('HGETALL', key('gift', id)))
  if g.state == 'pending' and well_formed(g, numbers_ok) then
    gifts[#gifts + 1] = g
  end
end
return reply({gifts = gifts})

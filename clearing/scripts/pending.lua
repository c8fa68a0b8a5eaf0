-- pending.lua (read only): the offers waiting for a user's answer, soonest expiry first.
--
-- KEYS[1]  {U}:inbox
-- A        u
-- Returns msgpack {gifts = [gift maps]}: offers still pending and inside their window.

local gifts = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. string.format('%d', NOW), '+inf')) do
  local g = record(id, redis.call('HGETALL', ukey(A.u, 'offer:' .. id)))
  if g.state == 'pending' and well_formed(g) then
    gifts[#gifts + 1] = public(g)
  end
end
return reply({gifts = gifts})

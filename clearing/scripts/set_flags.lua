-- set_flags.lua: change some of a user's flags, leave the others.
--
-- KEYS[1]  {U}:user
-- A        u, tag (U's slot tag), flags ({verified = '0' | '1', ...}, only the ones to
--          change; 'region' = a code, 'gender' = male | female | '' as clearing/accounts.py
--          checked them), dead
-- Returns msgpack {user, bal, held} (HGETALL replies) or {err = UNKNOWN_USER}. Pending
-- gifts are not touched: a ban stops new gifts, and the ones in flight resolve as usual so
-- no held amount is stranded. A ban also tells every live node holding the user's
-- connections to close them: the control message 'ctl:ban:<user>' on the node's channel
-- (lib.lua node_channel; clearing/events.py). presence.lua refuses new ones.

local key = KEYS[1]
if redis.call('EXISTS', key) == 0 then
  return refuse('UNKNOWN_USER')
end
for _, name in ipairs({'verified', 'vip', 'banned', 'region', 'gender'}) do
  if A.flags[name] then
    redis.call('HSET', key, name, A.flags[name])
  end
end
if A.flags.banned == '1' then
  for _, node in ipairs(live_nodes(A.u)) do
    redis.call('SPUBLISH', node_channel(A.tag, node), 'ctl:ban:' .. A.u)
  end
end
return reply({user = redis.call('HGETALL', key), bal = redis.call('HGETALL', ukey(A.u, 'bal')),
              held = redis.call('HGETALL', ukey(A.u, 'held'))})

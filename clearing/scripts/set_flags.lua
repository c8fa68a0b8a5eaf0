-- set_flags.lua: change an account's verified / vip / banned flags.
--
-- KEYS[1]  the user hash ({p}:user:<user_id>)
-- ARGV[1..7] common header (lib.lua)
-- ARGV[8]  user_id   ARGV[9] verified   ARGV[10] vip   ARGV[11] banned
--          each "0" | "1", or "" to leave the flag as it is
--
-- Returns msgpack {user = user hash, bal = balance hash, held = held hash} (HGETALL
-- lists) or {err = UNKNOWN_USER}. Pending gifts are not touched: a ban stops new gifts,
-- and the ones in flight resolve as usual so no held amount is stranded. A ban also tells
-- every live node holding the user's connections to close them: the control message
-- 'ctl:ban:<user>' on the node's channel (clearing/events.py). connect.lua refuses new ones.

local user_key = KEYS[1]
local user_id = ARGV[8]
if redis.call('EXISTS', user_key) == 0 then
  return refuse('UNKNOWN_USER')
end
local names = {'verified', 'vip', 'banned'}
for i, name in ipairs(names) do
  local value = ARGV[8 + i]
  if value ~= '' then
    redis.call('HSET', user_key, name, value)
  end
end
if ARGV[11] == '1' then
  for _, node in ipairs(live_nodes(user_id)) do
    redis.call('PUBLISH', key('node', node), 'ctl:ban:' .. user_id)
  end
end
return reply({user = redis.call('HGETALL', user_key), bal = redis.call('HGETALL', key('bal', user_id)),
              held = redis.call('HGETALL', key('held', user_id))})

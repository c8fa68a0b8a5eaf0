-- presence.lua: one more or one fewer connection of a user on a gateway node.
--
-- KEYS[1]  {U}:presence (node -> connections)
-- A        u, node, tag (U's slot tag), delta (1 | -1), cap (for a connect: the most
--          connections the user may hold over all live nodes; nil or 0: no cap, as for a
--          node announcing again the connections it already holds), dead
-- The slot's nodeusers:<node> set mirrors the hash, so that the entries of a node that dies
-- can be found per slot and dropped (drop_node.lua). A disconnect the hash has no record of
-- (reaped meanwhile, or a duplicate) changes nothing.
-- Returns msgpack {count}, or {err = ACCOUNT_BANNED | ACCOUNT_ERASED | TOO_MANY_CONNECTIONS} with nothing
-- written. Counts of
-- dead nodes do not count: their connections are gone. A count that is no whole number
-- reads as 0 and is written back whole.

local count
-- A banned account is refused in the same step that would count it: a ban set later finds
-- this node in the presence hash (set_flags.lua tells it).
-- An erased account (clearing/erasure.py, also banned) is told so.
if A.delta > 0 then
  local flags = redis.call('HMGET', ukey(A.u, 'user'), 'banned', 'erased')
  if flags[2] == '1' then
    return refuse('ACCOUNT_ERASED')
  end
  if flags[1] == '1' then
    return refuse('ACCOUNT_BANNED')
  end
end
if A.delta > 0 and (A.cap or 0) > 0 then
  local total, live = 0, {}
  for _, node in ipairs(live_nodes(A.u)) do
    live[node] = true
  end
  local flat = redis.call('HGETALL', KEYS[1])
  for i = 1, #flat, 2 do
    if live[flat[i]] then
      total = total + math.max(num(flat[i + 1]), 0)
    end
  end
  if total >= A.cap then
    return refuse('TOO_MANY_CONNECTIONS')
  end
end
local here = math.max(num(redis.call('HGET', KEYS[1], A.node)), 0)
if A.delta > 0 then
  count = here + 1
  redis.call('HSET', KEYS[1], A.node, count)
  redis.call('SADD', tkey(A.tag, 'nodeusers:' .. A.node), A.u)
elseif redis.call('HEXISTS', KEYS[1], A.node) == 1 then
  count = here - 1
  redis.call('HSET', KEYS[1], A.node, count)
  if count <= 0 then
    redis.call('HDEL', KEYS[1], A.node)
    redis.call('SREM', tkey(A.tag, 'nodeusers:' .. A.node), A.u)
    count = 0
  end
end
return reply({count = count or 0})

#!lua flags=allow-cross-slot-keys
-- drop_node.lua: forget a gateway node in some slots of one Redis node: its users'
-- presence entries and its live-room viewers there. The reaper (and a node leaving) calls
-- it for every slot, grouped by Redis node.
--
-- KEYS[1]  the first slot's nodeusers set of the node (routes the call)
-- A        tags (the slots' tags), node
-- Returns msgpack {users = entries dropped}.

local dropped = 0
for _, tag in ipairs(A.tags) do
  local users = tkey(tag, 'nodeusers:' .. A.node)
  for _, user in ipairs(redis.call('SMEMBERS', users)) do
    redis.call('HDEL', ukey(user, 'presence'), A.node)
    dropped = dropped + 1
  end
  redis.call('DEL', users)
  -- its live-room viewers: a user watching only through this node stops counting
  local rooms = tkey(tag, 'noderooms:' .. A.node)
  for _, entry in ipairs(redis.call('SMEMBERS', rooms)) do
    local sep = string.find(entry, '|', 1, true)
    local room, user = string.sub(entry, 1, sep - 1), string.sub(entry, sep + 1)
    local viewers = ukey(room, 'roomviewers')
    if redis.call('HDEL', ukey(room, 'roomconn'), A.node .. '|' .. user) == 1 then
      -- a count that is no whole number reads as 0 (HINCRBY would fail on it half-way)
      local nodes = math.max(num(redis.call('HGET', viewers, user)), 0) - 1
      if nodes > 0 then
        redis.call('HSET', viewers, user, nodes)
      else
        redis.call('HDEL', viewers, user)
      end
    end
  end
  redis.call('DEL', rooms)
end
return reply({users = dropped})

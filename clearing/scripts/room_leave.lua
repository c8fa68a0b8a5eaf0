-- room_leave.lua: one connection of a user left a live room on a gateway node.
--
-- KEYS[1]  {room}:roomconn
-- A        room, user, node, tag
-- Returns msgpack {viewers}. A leave the room has no record of (reaped meanwhile, or a
-- duplicate) changes nothing; the mirror of room_join.lua otherwise.

-- Counts are read and computed before the first write (no whole number reads as 0).
local field, viewers = A.node .. '|' .. A.user, ukey(A.room, 'roomviewers')
local here = redis.call('HGET', KEYS[1], field)
if here then
  local left = math.max(num(here), 0) - 1
  local nodes = math.max(num(redis.call('HGET', viewers, A.user)), 0) - 1
  if left > 0 then
    redis.call('HSET', KEYS[1], field, left)
  else
    redis.call('HDEL', KEYS[1], field)
    redis.call('SREM', tkey(A.tag, 'noderooms:' .. A.node), A.room .. '|' .. A.user)
    if nodes > 0 then
      redis.call('HSET', viewers, A.user, nodes)
    else
      redis.call('HDEL', viewers, A.user)
    end
  end
end
return reply({viewers = redis.call('HLEN', ukey(A.room, 'roomviewers'))})

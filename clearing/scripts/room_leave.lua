-- room_leave.lua: one connection of a user left a live room on a gateway node.
--
-- KEYS[1]  the room's connection hash ({p}:roomconn:<room>)
-- ARGV[1..7] common header (lib.lua)
-- ARGV[8]  room   ARGV[9] user   ARGV[10] node
--
-- Returns msgpack {viewers}. A leave the room has no record of (reaped meanwhile, or a
-- duplicate) changes nothing; the mirror of room_join.lua otherwise (counts read and
-- computed before the first write; one that is no whole number counts as 0).

local room, user, node = ARGV[8], ARGV[9], ARGV[10]
local field, viewers = node .. '|' .. user, key('roomviewers', room)
local stored = redis.call('HGET', KEYS[1], field)
if stored then
  local here = (whole(stored) or 0) - 1
  local nodes = (whole(redis.call('HGET', viewers, user) or 0) or 0) - 1
  if here > 0 then
    redis.call('HSET', KEYS[1], field, here)
  else
    redis.call('HDEL', KEYS[1], field)
    redis.call('SREM', key('noderooms', node), room .. '|' .. user)
    if nodes > 0 then
      redis.call('HSET', viewers, user, nodes)
    else
      redis.call('HDEL', viewers, user)
    end
  end
end
return reply({viewers = redis.call('HLEN', key('roomviewers', room))})

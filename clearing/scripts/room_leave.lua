-- room_leave.lua: one connection of a user left a live room on a gateway node.
--
-- KEYS[1]  the room's connection hash ({p}:roomconn:<room>)
-- ARGV[1..7] common header (lib.lua)
-- ARGV[8]  room   ARGV[9] user   ARGV[10] node
--
-- Returns msgpack {viewers}. A leave the room has no record of (reaped meanwhile, or a
-- duplicate) changes nothing; the mirror of room_join.lua otherwise.

local room, user, node = ARGV[8], ARGV[9], ARGV[10]
local field = node .. '|' .. user
if redis.call('HEXISTS', KEYS[1], field) == 1 and redis.call('HINCRBY', KEYS[1], field, -1) <= 0 then
  redis.call('HDEL', KEYS[1], field)
  redis.call('SREM', key('noderooms', node), room .. '|' .. user)
  if redis.call('HINCRBY', key('roomviewers', room), user, -1) <= 0 then
    redis.call('HDEL', key('roomviewers', room), user)
  end
end
return reply({viewers = redis.call('HLEN', key('roomviewers', room))})

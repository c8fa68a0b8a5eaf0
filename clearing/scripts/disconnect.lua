-- disconnect.lua: one connection of a user on a gateway node went away.
--
-- KEYS[1]  the user's presence hash ({p}:presence:<user>)
-- ARGV[1..7] common header (lib.lua)
-- ARGV[8]  user   ARGV[9] node
--
-- Returns msgpack {count = connections left on that node}. A disconnect the node no longer
-- has on record (it was reaped meanwhile, or a duplicate) changes nothing: the count never
-- goes below zero, and at zero the entry and the nodeusers membership are removed (a
-- count that is no whole number counts as 0, computed before the first write).

local user, node = ARGV[8], ARGV[9]
local stored = redis.call('HGET', KEYS[1], node)
if not stored then
  return reply({count = 0})
end
local count = (whole(stored) or 0) - 1
if count > 0 then
  redis.call('HSET', KEYS[1], node, count)
else
  redis.call('HDEL', KEYS[1], node)
  redis.call('SREM', key('nodeusers', node), user)
  count = 0
end
return reply({count = count})

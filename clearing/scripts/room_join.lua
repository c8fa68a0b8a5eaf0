-- room_join.lua: one more connection of a user in a live room, on a gateway node.
--
-- KEYS[1]  the room's connection hash ({p}:roomconn:<room>, "node|user" -> count)
-- ARGV[1..7] common header (lib.lua)
-- ARGV[8]  room   ARGV[9] user   ARGV[10] node
-- ARGV[11] '1': the room must be open (its streamer opened a wish, open_wish.lua), else
--          NO_WISH with nothing written; '0': a node counting again the viewers it holds
--
-- Returns msgpack {viewers = distinct users in the room} or {err = NO_WISH}. Every room a
-- node holds viewers in is read on each of its push ticks: a room nobody streams would be
-- that cost for nothing, and any id could name one. A user counts once however many
-- devices and nodes: roomviewers holds, per user, the number of nodes where the user has
-- at least one connection, and its HLEN is the viewer count. noderooms:<node> remembers
-- the node's entries, so drop_node (lib.lua) removes a dead node's viewers. Both counts
-- are read and computed before the first write; one that is no whole number (or below 0)
-- counts as 0.

local room, user, node = ARGV[8], ARGV[9], ARGV[10]
if ARGV[11] == '1' and redis.call('HGET', key('room', room), 'streamer') ~= room then
  return refuse('NO_WISH')
end
local field, viewers = node .. '|' .. user, key('roomviewers', room)
local here = math.max(whole(redis.call('HGET', KEYS[1], field) or 0) or 0, 0) + 1
local nodes = math.max(whole(redis.call('HGET', viewers, user) or 0) or 0, 0) + 1
redis.call('HSET', KEYS[1], field, here)
if here == 1 then
  redis.call('SADD', key('noderooms', node), room .. '|' .. user)
  redis.call('HSET', viewers, user, nodes)
end
return reply({viewers = redis.call('HLEN', key('roomviewers', room))})

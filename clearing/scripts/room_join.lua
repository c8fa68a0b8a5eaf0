-- room_join.lua: one more connection of a user in a live room, on a gateway node.
--
-- KEYS[1]  {room}:roomconn ("node|user" -> count)
-- A        room, user, node, tag (the room's slot tag), open (true: the room must be open,
--          its streamer opened a wish (open_wish.lua), else NO_WISH with nothing written;
--          false: a node counting again the viewers it holds)
-- Returns msgpack {viewers = distinct users in the room}. A user counts once however many
-- devices and nodes: roomviewers holds, per user, the number of nodes where the user has
-- at least one connection, and its HLEN is the viewer count. The slot's noderooms:<node>
-- remembers the node's entries, so drop_node.lua removes a dead node's viewers.

-- Every room a node holds viewers in is read on each of its push ticks: a room nobody
-- streams would be that cost for nothing, and any id could name one.
if A.open and redis.call('HGET', ukey(A.room, 'room'), 'streamer') ~= A.room then
  return refuse('NO_WISH')
end
-- Counts are read and computed before the first write; one that is no whole number (or
-- below 0) reads as 0.
local field, viewers = A.node .. '|' .. A.user, ukey(A.room, 'roomviewers')
local here = math.max(num(redis.call('HGET', KEYS[1], field)), 0) + 1
local nodes = math.max(num(redis.call('HGET', viewers, A.user)), 0) + 1
redis.call('HSET', KEYS[1], field, here)
if here == 1 then
  redis.call('SADD', tkey(A.tag, 'noderooms:' .. A.node), A.room .. '|' .. A.user)
  redis.call('HSET', viewers, A.user, nodes)
end
return reply({viewers = redis.call('HLEN', ukey(A.room, 'roomviewers'))})

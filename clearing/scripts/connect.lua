-- connect.lua: one more connection of a user on a gateway node.
--
-- KEYS[1]  the user's presence hash ({p}:presence:<user>, node -> connection count)
-- ARGV[1..7] common header (lib.lua)
-- ARGV[8]  user   ARGV[9] node
--
-- Returns msgpack {count = the user's connections on that node}.
-- Invariants kept: a node with a count > 0 in a presence hash has the user in its
-- nodeusers set, so dropping a dead node finds every entry it left behind. The count is
-- computed before the first write (one that is no whole number, or below 0, counts as 0).

local user, node = ARGV[8], ARGV[9]
local count = math.max(whole(redis.call('HGET', KEYS[1], node) or 0) or 0, 0) + 1
redis.call('HSET', KEYS[1], node, count)
redis.call('SADD', key('nodeusers', node), user)
return reply({count = count})

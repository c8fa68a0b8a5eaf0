-- connect.lua: one more connection of a user on a gateway node.
--
-- KEYS[1]  the user's presence hash ({p}:presence:<user>, node -> connection count)
-- ARGV[1..7] common header (lib.lua)
-- ARGV[8]  user   ARGV[9] node
--
-- Returns msgpack {count = the user's connections on that node}, or {err = ACCOUNT_BANNED}
-- with nothing written when the user's account is banned. The check and the count are one
-- step: a ban set later finds this node in the presence hash (set_flags.lua tells it).
-- Invariants kept: a node with a count > 0 in a presence hash has the user in its
-- nodeusers set, so dropping a dead node finds every entry it left behind.

local user, node = ARGV[8], ARGV[9]
if redis.call('HGET', key('user', user), 'banned') == '1' then
  return refuse('ACCOUNT_BANNED')
end
local count = redis.call('HINCRBY', KEYS[1], node, 1)
redis.call('SADD', key('nodeusers', node), user)
return reply({count = count})

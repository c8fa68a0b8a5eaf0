-- live_nodes.lua (read only): the live gateway nodes holding a user's connections.
--
-- KEYS[1]  the user's presence hash ({p}:presence:<user>)
-- ARGV[1..7] common header (lib.lua)
-- ARGV[8]  user
--
-- Returns msgpack {nodes = [node, ...]}, by the same test the gift scripts use to decide
-- RECIPIENT_OFFLINE and where to publish.

return reply({nodes = live_nodes(ARGV[8])})

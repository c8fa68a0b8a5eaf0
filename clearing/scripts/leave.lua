-- leave.lua: a gateway node shuts down gracefully and takes its presence with it.
--
-- KEYS[1]  the node's user set ({p}:nodeusers:<node>)
-- ARGV[1..7] common header (lib.lua)
-- ARGV[8]  node
--
-- Returns msgpack {}. Idempotent. Invariants kept: after it no presence hash names the
-- node, so no event is published to it and none of its users counts as online through it.

node_dropper()(ARGV[8])
return reply({})

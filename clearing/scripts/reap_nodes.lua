-- reap_nodes.lua: forget gateway nodes that stopped sending heartbeats.
--
-- KEYS[1]  the node registry ({p}:nodes, zset node -> last heartbeat ms)
-- ARGV[1..7] common header (lib.lua)
--
-- Returns msgpack {nodes = [node, ...]}: the nodes this call removed. A node is dead when
-- its last heartbeat <= now - node_ttl_ms, the exact complement of lib.lua's live_nodes(),
-- so no node is ever both ignored for delivery and kept. Idempotent: a reaped node has no
-- heartbeat left and is not found again.

local drop_node = node_dropper()
local cutoff = NOW - tonumber(NODE_TTL)
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff)
for _, node in ipairs(dead) do
  drop_node(node)
end
return reply({nodes = dead})

-- disconnect.lua: close a user's open connections on every live node, at an operator's
-- request (POST /admin/users/{user}/disconnect).
--
-- KEYS[1]  {U}:user (routes the call to U's slot; the user need not have an account: a
--          genuine token of a user without one is accepted, docs/protocol.md section 13)
-- A        u, tag (U's slot tag), dead
-- Returns msgpack {nodes = how many nodes were told}. Publishes the control message
-- 'ctl:kick:<user>' on the channel of every live node in U's presence hash (lib.lua
-- node_channel; clearing/events.py); each closes U's connections with SESSION_ENDED (3506).
-- Writes nothing.

local nodes = live_nodes(A.u)
for _, node in ipairs(nodes) do
  redis.call('SPUBLISH', node_channel(A.tag, node), 'ctl:kick:' .. A.u)
end
return reply({nodes = #nodes})

-- rate.lua: one request of a user, against the user's rate over every node.
--
-- KEYS[1]  the user's rate key ({p}:rate:<user>)
-- ARGV[1..7] common header (lib.lua)
-- ARGV[8]  user   ARGV[9] us per request (>= 1)   ARGV[10] burst (>= 1)
--
-- Returns msgpack {ok = 1}, the request counted, or {ok = 0} with nothing written. For
-- the requests with no gift script of their own; see take_rate in lib.lua.

return reply({ok = take_rate(ARGV[8], ARGV[9], ARGV[10]) and 1 or 0})

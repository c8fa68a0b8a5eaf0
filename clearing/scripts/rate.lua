-- rate.lua: one request of a user, against the user's rate over every node.
--
-- KEYS[1]  {U}:rate
-- A        u, rate_us (us per request, >= 1), rate_burst (>= 1)
-- Returns msgpack {ok = 1}, the request counted, or {ok = 0} with nothing written. For the
-- requests with no gift script of their own (and a send across shards, before its first
-- step); see take_rate in lib.lua.

return reply({ok = take_rate(A.u, A.rate_us, A.rate_burst) and 1 or 0})

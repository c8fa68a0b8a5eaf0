-- create_user.lua: register an account.
--
-- KEYS[1]  the user hash ({p}:user:<user_id>)
-- ARGV[1..7] common header (lib.lua)
-- ARGV[8]  user_id   ARGV[9] verified   ARGV[10] vip   ARGV[11] banned   ("0" | "1")
-- ARGV[12] created_at_ms   ARGV[13] app
--
-- Returns msgpack {user = HGETALL of the user hash} or {err = USER_EXISTS}.
-- Invariants kept: every user in the users set (the invariant check walks it) has all
-- five fields; created_at_ms marks existence for the other scripts.

local user_key = KEYS[1]
if redis.call('EXISTS', user_key) == 1 then
  return refuse('USER_EXISTS')
end
redis.call('HSET', user_key, 'verified', ARGV[9], 'vip', ARGV[10], 'banned', ARGV[11],
           'created_at_ms', ARGV[12], 'app', ARGV[13])
redis.call('SADD', key('users'), ARGV[8])
return reply({user = redis.call('HGETALL', user_key)})

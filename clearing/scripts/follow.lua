-- follow.lua: start or stop following a user.
--
-- KEYS[1]  the follower's follows hash ({p}:follows:<follower>, followee -> since ms)
-- ARGV[1..7] common header (lib.lua)
-- ARGV[8]  follower   ARGV[9] followee   ARGV[10] "follow" | "unfollow"
-- ARGV[11] since_ms (follow only): when the follow started
-- ARGV[12] "1" when since_ms was given explicitly (an import or a correction): it replaces
--          the stored start; "0" (the user pressed follow): an existing follow keeps its
--          start, so following again neither resets the 3-day age nor restarts it
--
-- Returns msgpack {} or {err = UNKNOWN_USER}.

local follower, followee, action = ARGV[8], ARGV[9], ARGV[10]
if redis.call('EXISTS', key('user', follower)) == 0 or redis.call('EXISTS', key('user', followee)) == 0 then
  return refuse('UNKNOWN_USER')
end
if action == 'follow' and ARGV[12] == '1' then
  redis.call('HSET', KEYS[1], followee, ARGV[11])
elseif action == 'follow' then
  redis.call('HSETNX', KEYS[1], followee, ARGV[11])
else
  redis.call('HDEL', KEYS[1], followee)
end
return reply({})

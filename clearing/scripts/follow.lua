-- follow.lua: follow or unfollow (the follower's side; the gift rules read both sides).
--
-- KEYS[1]  {A}:follows
-- A        follower, followee, action ('follow' | 'unfollow'), since (ms), explicit
--          (true: set the start to `since`; false: keep an existing follow's start)
-- The followee's existence is checked by the caller (it lives in another slot).
-- Returns msgpack {} or {err = UNKNOWN_USER}.

if redis.call('EXISTS', ukey(A.follower, 'user')) == 0 then
  return refuse('UNKNOWN_USER')
end
if A.action == 'follow' and A.explicit then
  redis.call('HSET', KEYS[1], A.followee, A.since)
elseif A.action == 'follow' then
  redis.call('HSETNX', KEYS[1], A.followee, A.since)
else
  redis.call('HDEL', KEYS[1], A.followee)
end
return reply({})

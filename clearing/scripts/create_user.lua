-- create_user.lua: a new account, listed in its slot's user set (the invariant walks them).
--
-- KEYS[1]  {U}:user
-- A        u, tag (U's slot tag), verified, vip, banned ('0' | '1'), created_at_ms, app, region
-- Returns msgpack {user = HGETALL} or {err = USER_EXISTS}.

local key = KEYS[1]
if redis.call('EXISTS', key) == 1 then
  return refuse('USER_EXISTS')
end
redis.call('HSET', key, 'verified', A.verified, 'vip', A.vip, 'banned', A.banned, 'created_at_ms', A.created_at_ms,
           'app', A.app, 'region', A.region)
redis.call('SADD', tkey(A.tag, 'users'), A.u)
return reply({user = redis.call('HGETALL', key)})

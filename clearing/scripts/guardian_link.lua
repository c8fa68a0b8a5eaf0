-- guardian_link.lua: an operator links a guardian to a ward, or unlinks it (docs/regions.md,
-- "Guardian confirmation"), on the ward's slot. The guardian is a field of the ward's account
-- (where the send's admit step reads it); every change is appended to the ward's guardian log
-- in the same script, so the audit and the link cannot disagree.
--
-- KEYS[1]  {W}:user
-- A        u (the ward), guardian (a user id clearing/accounts.py checked exists, or '' to
--          unlink), operator (who acts)
-- Returns msgpack {user, bal, held} (HGETALL replies) or {err = UNKNOWN_USER}.

local key = KEYS[1]
if redis.call('EXISTS', key) == 0 then
  return refuse('UNKNOWN_USER')
end
local before = redis.call('HGET', key, 'guardian') or ''
-- ------------------------------------------------------------ writes
if before ~= A.guardian then
  if A.guardian == '' then
    redis.call('HDEL', key, 'guardian')
  else
    redis.call('HSET', key, 'guardian', A.guardian)
  end
  redis.call('XADD', ukey(A.u, 'guardian_log'), 'MAXLEN', '~', 1000, '*', 'at_ms', NOW, 'operator', A.operator,
             'from', before, 'to', A.guardian)
end
return reply({user = redis.call('HGETALL', key), bal = redis.call('HGETALL', ukey(A.u, 'bal')),
              held = redis.call('HGETALL', ukey(A.u, 'held'))})

-- block.lua: block or unblock a user (either direction forbids gifts between the two).
--
-- KEYS[1]  {blocker}:blocks
-- A        blocker, blocked, action ('block' | 'unblock')
-- The blocked user's existence is checked by the caller. Idempotent both ways. Gifts
-- already pending between the two are not cancelled: a block only stops new ones.
-- Returns msgpack {} or {err = UNKNOWN_USER}.

if redis.call('EXISTS', ukey(A.blocker, 'user')) == 0 then
  return refuse('UNKNOWN_USER')
end
if A.action == 'block' then
  redis.call('SADD', KEYS[1], A.blocked)
else
  redis.call('SREM', KEYS[1], A.blocked)
end
return reply({})

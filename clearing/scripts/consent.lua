-- consent.lua: a user gives or withdraws data-processing consent (docs/regions.md), on the
-- user's slot: the consent on record is fields of the account hash, where the send scripts
-- read it, and every change is appended to the user's consent history.
--
-- KEYS[1]  {U}:user
-- A        u, action ('give' | 'withdraw'), version (give: the consent text's id), channel
--          (how it was given: what the client said), app (the connection's app),
--          history_max (entries kept; the oldest go first)
-- Returns msgpack {changed, version, at_ms, channel} (the consent on record after the call;
-- no version after a withdrawal) or {err = UNKNOWN_USER | ACCOUNT_ERASED}. Giving the
-- version already on record, or withdrawing when none is, changes nothing and adds no entry.

local key = KEYS[1]
local u = redis.call('HMGET', key, 'created_at_ms', 'erased', 'consent', 'consent_at_ms', 'consent_channel')
if u[2] == '1' then
  return refuse('ACCOUNT_ERASED')  -- a tombstone (erase.lua) has no created_at_ms
end
if not u[1] then
  return refuse('UNKNOWN_USER')
end
if whole(A.history_max) == nil or A.history_max < 1 then
  return refuse('BAD_REQUEST')  -- checked before any write: LTRIM would fail after RPUSH
end
local current = u[3] or nil  -- HMGET reads a missing field as false
local function history(action, version)
  local h = ukey(A.u, 'consents')
  redis.call('RPUSH', h, cjson.encode({action = action, version = version, channel = A.channel, app = A.app,
                                      at_ms = NOW}))
  redis.call('LTRIM', h, -A.history_max, -1)
end

if A.action == 'give' then
  if current == A.version then
    return reply({changed = false, version = current, at_ms = whole(u[4] or nil), channel = u[5]})
  end
  redis.call('HSET', key, 'consent', A.version, 'consent_at_ms', NOW, 'consent_channel', A.channel)
  history('give', A.version)
  return reply({changed = true, version = A.version, at_ms = NOW, channel = A.channel})
end

if current == nil then
  return reply({changed = false})
end
redis.call('HDEL', key, 'consent', 'consent_at_ms', 'consent_channel')
redis.call('HSET', key, 'consent_withdrawn_at_ms', NOW)
history('withdraw', current)
return reply({changed = true, at_ms = NOW, channel = A.channel})

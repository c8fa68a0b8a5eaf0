-- guardian_ask.lua: a gift that waits for a guardian (docs/regions.md, "Guardian
-- confirmation"), on the guardian's slot: the request goes into the guardian's event stream
-- (kind 'guardian', replayed after a reconnect like any event) and to each of the guardian's
-- live devices. Once per gift: a marker under the gift id makes a retry (the recovery worker's
-- ask|R|id entry, a node that asks again) change nothing.
--
-- KEYS[1]  {G}:user
-- A        gid, g (the guardian), gtag (G's slot tag), gift (the gift's public fields as the
--          guardian sees them: state pending, expires_at_ms = the end of the guardian's
--          window), retention, dead, ep, maxlen
-- Returns msgpack {asked = true} (asked now) or {asked = false} (asked before, or the
-- guardian's account is gone: nobody to ask, the gift expires at the end of the window).

if redis.call('EXISTS', ukey(A.g, 'user')) == 0 then
  return reply({asked = false})
end
local marker = ukey(A.g, 'gask:' .. A.gid)
if redis.call('EXISTS', marker) == 1 then
  return reply({asked = false})
end
-- ------------------------------------------------------------ writes
redis.call('SET', marker, '1', 'PX', A.retention)
emit(A.g, A.gtag, 'guardian', A.gift)
return reply({asked = true})

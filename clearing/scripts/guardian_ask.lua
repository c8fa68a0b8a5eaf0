-- guardian_ask.lua: a gift that waits for a guardian (docs/regions.md, "Guardian
-- confirmation"), on the guardian's slot: the request goes into the guardian's event stream
-- (kind 'guardian', replayed after a reconnect like any event) and to each of the guardian's
-- live devices, and into the guardian's open requests (`gopen`, scored by the end of the
-- guardian's window, the request itself under `greq:<ward>|<gid>`), which a device that has
-- no stream position lists with guardian_open.lua. Once per gift: a marker under the gift id
-- makes a retry (the recovery worker's ask|R|id entry, a node that asks again) change
-- nothing, and guardian_settle.lua sets it too, so an answer that came first is not undone.
--
-- KEYS[1]  {G}:user
-- A        gid, g (the guardian), gtag (G's slot tag), gift (the gift's public fields as the
--          guardian sees them: state pending, expires_at_ms = the end of the guardian's
--          window; recipient = the ward), retention, dead, ep, maxlen
-- Returns msgpack {asked = true} (asked now) or {asked = false} (asked before, or the
-- guardian's account is gone or erased: nobody to ask, nothing written under the guardian's
-- id, the gift expires at the end of the window and the sender is refunded).

if redis.call('EXISTS', ukey(A.g, 'user')) == 0 or redis.call('HGET', ukey(A.g, 'user'), 'erased') == '1' then
  return reply({asked = false})
end
local marker = ukey(A.g, 'gask:' .. A.gid)
if redis.call('EXISTS', marker) == 1 then
  return reply({asked = false})
end
local until_ms = tonumber(A.gift.expires_at_ms)
local ward = A.gift.recipient
if type(until_ms) ~= 'number' or type(ward) ~= 'string' or ward == '' then
  return reply({asked = false})
end
local open = ukey(A.g, 'gopen')
-- Requests whose window passed leave the list here (the sweeper refunds them on the ward's
-- slot); at most a page per call, so one ask never does unbounded work.
local stale = redis.call('ZRANGEBYSCORE', open, '-inf', string.format('%d', NOW), 'LIMIT', 0, 64)
-- ------------------------------------------------------------ writes
for _, member in ipairs(stale) do
  redis.call('ZREM', open, member)
  redis.call('DEL', ukey(A.g, 'greq:' .. member))
end
redis.call('SET', marker, '1', 'PX', A.retention)
local member = ward .. '|' .. A.gid
redis.call('ZADD', open, until_ms, member)
redis.call('SET', ukey(A.g, 'greq:' .. member), cmsgpack.pack(public(A.gift)), 'PX', A.retention)
emit(A.g, A.gtag, 'guardian', A.gift)
return reply({asked = true})

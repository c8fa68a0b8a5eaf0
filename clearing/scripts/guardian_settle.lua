-- guardian_settle.lua: a guardian answered a gift (approve or reject, from any of their
-- devices; docs/regions.md), on the guardian's slot, after the answer's own script on the
-- ward's slot: the request leaves the guardian's open requests and a 'guardian_done' event
-- (the gift as it now stands) goes into the guardian's stream, live to every device and
-- replayed after a reconnect, so the devices that did not answer drop the request. Once per
-- gift: only the call that removes the open request emits; the ask marker is set too, so an
-- ask that arrives after the answer (a retry of the recovery worker) asks nothing.
--
-- KEYS[1]  {G}:user
-- A        g (the guardian), gtag, ward, gid, gift (the gift's public fields as it stands
--          after the answer), retention, ep, maxlen
-- Returns msgpack {settled = true} (told now) or {settled = false} (told before, never
-- asked on this slot, or the guardian was erased).

-- An erased guardian (a tombstone, clearing/erasure.py) has nothing to be told, and nothing
-- may be written under the erased id again.
if redis.call('HGET', ukey(A.g, 'user'), 'erased') == '1' then
  return reply({settled = false})
end
local member = A.ward .. '|' .. A.gid
local open = ukey(A.g, 'gopen')
local was_open = redis.call('ZSCORE', open, member)
-- ------------------------------------------------------------ writes
redis.call('SET', ukey(A.g, 'gask:' .. A.gid), '1', 'PX', A.retention, 'NX')
if not was_open then
  return reply({settled = false})
end
redis.call('ZREM', open, member)
redis.call('DEL', ukey(A.g, 'greq:' .. member))
emit(A.g, A.gtag, 'guardian_done', A.gift)
return reply({settled = true})

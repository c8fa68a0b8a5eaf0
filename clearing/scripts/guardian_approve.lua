-- guardian_approve.lua: the recipient's guardian approves a gift awaiting them, on the
-- recipient's (the ward's) slot, on every topology: the gift becomes `pending` (the state
-- table's approve), an offer to the recipient like any other, whose own window starts now
-- (rwin): the inbox, the slot's expiry queue moved to the new end, the offer event to R's
-- devices. The guardian's rejection is a decision like a decline (answer.lua / resolve.lua,
-- event 'reject'), refunded the same way.
--
-- KEYS[1]  {R}:user
-- A        gid, r (the ward), rtag, by (the guardian answering; their request rate lives in
--          their own slot and is taken before, by the node), dead, ep, maxlen
-- Returns msgpack {gift, changed} (changed false: approved before, an idempotent repeat) or
-- {err = GIFT_NOT_FOUND | NOT_GUARDIAN | ALREADY_RESOLVED (rejected before) | GIFT_EXPIRED
-- (the guardian's window passed; the sweeper refunds it), gift?}.

local flat = redis.call('HGETALL', offer_key())
if #flat == 0 then
  return refuse('GIFT_NOT_FOUND')
end
local o = record(A.gid, flat)
if not o.guardian or o.guardian == '' or not well_formed(o) then
  return refuse('GIFT_NOT_FOUND')
end
if o.guardian ~= A.by then
  return refuse('NOT_GUARDIAN')
end
local shown = public(o)
shown.guardian = nil
if o.gdone == 'approved' then
  return reply({gift = shown, changed = false})
elseif o.gdone == 'rejected' then
  return refuse('ALREADY_RESOLVED', shown)
elseif o.state == 'expired' or (o.state == 'awaiting_guardian' and NOW >= o.expires_at_ms) then
  return refuse('GIFT_EXPIRED', shown)
end
local to = move(o.state, 'approve')
local window = o.rwin
if to == nil or type(window) ~= 'number' or window < 1 then
  return refuse('GIFT_NOT_FOUND')
end
local nodes = live_nodes(A.r)

-- ------------------------------------------------------------ writes
local key = offer_key()
o.state, o.expires_at_ms, o.gdone = to, NOW + window, 'approved'
redis.call('HSET', key, 'state', o.state, 'expires_at_ms', o.expires_at_ms, 'gdone', o.gdone)
redis.call('ZADD', ukey(A.r, 'inbox'), o.expires_at_ms, A.gid)
redis.call('ZADD', tkey(A.rtag, 'expiry'), o.expires_at_ms, A.r .. '|' .. A.gid)
index_due(A.rtag, o.expires_at_ms)
redis.call('ZREM', tkey(A.rtag, 'due'), 'ask|' .. A.r .. '|' .. A.gid)
emit(A.r, A.rtag, 'offer', o, nodes)
shown = public(o)
shown.guardian = nil
return reply({gift = shown, changed = true})

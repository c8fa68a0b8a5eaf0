-- offer.lua: send, step 3 of 3 across shards, on the recipient's slot: the admitted offer
-- half takes what the send half decided (A.send) and becomes `pending`: inbox, the slot's
-- expiry queue, the offer event to R's devices. A retry finds it offered and changes nothing.
--
-- KEYS[1]  {R}:user
-- A        gid, r, rtag, send (cost, amount, created_at_ms, expires_at_ms, payer, ptag,
--          festival, room), dead, ep, maxlen
-- Returns msgpack {gift = {state, resolved_at_ms}} (all the caller reads of the offer half: the
-- rest of the gift it has from the send half, and packing the whole half cost every gift) or
-- {err = GIFT_NOT_FOUND | SEND_ABORTED} (no admitted offer half: a voided send never gets
-- here, since void follows only a sender's refusal or tombstone).

local flat = call('HGETALL', offer_key())
if #flat == 0 then
  return refuse('GIFT_NOT_FOUND')
end
local o = record(A.gid, flat)
if o.state == 'void' then
  return refuse('SEND_ABORTED')
end
if move(o.state, 'offer') then
  o = apply_offer(o, A.send)
end
return reply({gift = {state = o.state, resolved_at_ms = o.resolved_at_ms}})

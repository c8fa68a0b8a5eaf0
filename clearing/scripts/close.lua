-- close.lua: answer or expiry, step 3 of 3 across shards, on the recipient's slot: an
-- accepted gift's amount leaves transit for the recipient's balance (points, room credit),
-- the recipient is told, and nothing is due any more. Once per gift.
--
-- KEYS[1]  {R}:user
-- A        gid, r, perks (those of the gift's two apps suffice), lucky_paid (what lucky.lua
--          paid, for a gift with a lucky bonus), retention, dead, ep, maxlen, pointlog_max
-- Returns msgpack {gift} or {err = GIFT_NOT_FOUND}.

local flat = redis.call('HGETALL', offer_key())
if #flat == 0 then
  return refuse('GIFT_NOT_FOUND')
end
local o = record(A.gid, flat)
if o.closed == 0 then
  local bad, points = check_close(o)
  if bad then
    return refuse(bad)
  end
  apply_close(o, points)
end
return reply({gift = public(o)})

-- reserve.lua: send, step 2 of 3 across shards, on the sender's slot: idempotency and S's
-- rules, merged with the recipient's refusal (A.rcode, from admit) in the documented order;
-- then the hold, S's send slot and the send half, `pending`.
--
-- KEYS[1]  {S}:user
-- A        see gift.lua; rcode: admit's refusal or nil; rguard: admit's guard verdict or nil;
--          sponsor: nil, 'yes' or 'no'
-- Returns msgpack {send = the send half, with its saga fields}, {need_sponsor, cost} (ask the
-- promotion account, then call again with A.sponsor), or {err} (remembered as in send.lua).

local res = check_reserve(A.rcode, A.rguard)
if res.err then
  if res.remember then
    remember_refusal(res.err, res.remember, res.until_ms)
  end
  return refuse(res.err, nil, res.until_ms)
end
if res.existing then
  return reply({send = res.existing})
end
if res.need_sponsor then
  return reply({need_sponsor = true, cost = res.cost})
end
apply_reserve(res.g)
return reply({send = res.g})

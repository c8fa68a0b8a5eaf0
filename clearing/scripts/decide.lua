-- decide.lua: answer or expiry, step 1 of 3 across shards, on the recipient's slot: the
-- offer half decides (see resolve.lua for the rules) and is due for settling.
--
-- KEYS[1]  {R}:user
-- A        gid, r, by, event, rapp, saga_ms, quota_ttl, lucky, lpromo, lptag (the lucky card,
--          gift_answer.lua: drawn and recorded here, paid by lucky.lua, credited by close)
-- Returns msgpack {decided = the offer half with its saga fields, changed, code} where code
-- is GIFT_EXPIRED / ALREADY_RESOLVED for the caller to raise once the saga is finished, or
-- {err = GIFT_NOT_FOUND | NOT_RECIPIENT | NOT_DUE}.

-- An answer first counts against the answering user's rate (an expiry is nobody's request).
if A.by and not check_rate(A.by, A.rate_us, A.rate_burst) then
  return refuse('RATE_LIMITED')
end

local d = check_decide()
if d.g == nil then
  return refuse(d.err, d.gift and public(d.gift))
end
if d.changed then
  apply_decide(d.g, d.to, true, d.lucky)
end
local code = d.err
if d.expired then
  code = 'GIFT_EXPIRED'
end
return reply({decided = d.g, changed = d.changed == true, code = code})

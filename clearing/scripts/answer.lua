-- answer.lua: answer or expiry across shards, step 1 of 2 (of 3 for a lucky bonus to pay),
-- on the recipient's slot: the offer half decides (see resolve.lua for the rules) and, in
-- the common case, R's side of the answer is done at once (gift_answer.lua apply_answered:
-- an accepted gift credited to R, owed by R's slot until settle@S; a declined or expired
-- one gives R's slots back; R told), then settle@S is due as `answered|R|id`. An accepted
-- gift with a lucky bonus to pay only decides (closed 0, due as `settle|R|id`): settle@S,
-- lucky@P and close@R follow.
--
-- KEYS[1]  {R}:user
-- A        gid, r, by, event, rapp, rate_us and rate_burst (absent: no limit), due_at (NOW
--          + the saga's step deadline, as text: when the next step is due), perks (the
--          answering app's and those of the apps with a joint campaign suffice), consent,
--          lucky, lpromo, lptag (the lucky card, gift_answer.lua: drawn and recorded here,
--          paid by lucky.lua, credited by close), dead, ep, maxlen, pointlog_max
-- Returns msgpack {decided = the offer half with its saga fields (closed 0, or closed 1 with
-- owed 1 when answered now), changed, code} where code is GIFT_EXPIRED / ALREADY_RESOLVED
-- for the caller to raise once the saga is finished, or {err = GIFT_NOT_FOUND |
-- NOT_RECIPIENT | NOT_DUE | CORRUPT}. A repeated answer changes nothing and returns the offer half as it stands.

-- An answer first counts against the answering user's rate (an expiry is nobody's request).
if A.by and not check_rate(A.by, A.rate_us, A.rate_burst) then
  return refuse('RATE_LIMITED')
end

local d = check_decide()
if d.g == nil then
  return refuse(d.err, d.gift and public(d.gift))
end
local g = d.g
local now = d.changed and answers_at_once(d.to, d.lucky)
local points  -- R's points total, read by check_close for apply_answered
if now then
  -- What R's side will change, read before the first write, as close reads it.
  local was = g.state
  g.state = d.to
  if d.lucky then
    for k, v in pairs(d.lucky) do
      g[k] = v
    end
    A.lucky_paid = 0  -- drawn, nothing to pay: recorded as paid 0
  end
  local bad
  bad, points = check_close(g)
  g.state = was
  if bad then
    return refuse(bad)
  end
end
if d.changed then
  apply_decide(g, d.to, now and 'answered' or 'settle', d.lucky)
  if now then
    apply_answered(g, points)
  end
end
local code = d.err
if d.expired then
  code = 'GIFT_EXPIRED'
end
return reply({decided = g, changed = d.changed == true, code = code})

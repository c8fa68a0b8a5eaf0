#!lua flags=allow-cross-slot-keys
-- resolve.lua: a whole answer or expiry in one script, the fast path (decide, settle at the
-- payer and the sender, close at the recipient, on one Redis node).
--
-- KEYS[1]  {R}:user
-- A        gid, r (the recipient: the user answering, or the sweeper's entry), by (the user
--          answering; nil for an expiry), event ('accept' | 'decline' | 'expire'), rapp
--          (the app answering; a gift decided before this call keeps the one it records), perks,
--          retention, dead, ep, maxlen, pointlog_max; lucky,
--          lpromo, lptag: the lucky card (gift_answer.lua), drawn, paid and credited here
--
-- The decision (gift.lua check_decide):
--   pending, now < expires_at_ms   -> moved by the event, changed = true
--   pending, now >= expires_at_ms  -> expired right here, {err = GIFT_EXPIRED, gift}
--   already in the event's state   -> changed = false (a retry of the call that did it)
--   expired                        -> GIFT_EXPIRED again; another final state: ALREADY_RESOLVED
-- and a decided gift whose saga stopped half-way (cross-shard, before this call) is settled
-- and closed here too: one answered at R already (closed 1, owed 1: R credited and told) is only
-- settled at its payer and the sender, never credited again. Returns msgpack {gift, changed} or {err, gift?}.
-- Invariants kept: a gift leaves pending at most once (TigerBeetle's "a pending transfer
-- resolves at most once"), through MOVES; every read and check precedes the first write.

-- An answer first counts against the answering user's rate (an expiry is nobody's request).
if A.by and not check_rate(A.by, A.rate_us, A.rate_burst) then
  return refuse('RATE_LIMITED')
end

local d = check_decide()
local g = d.g
if g == nil then
  return refuse(d.err, d.gift and public(d.gift))
end
A.s = g.sender
local to = d.to or g.state
-- A gift decided before this call (a saga stopped half-way) settles as it was answered: with
-- the answering app its offer half records (apply_settle reads its joint flag), as the
-- saga's settle does, not this call's.
if not d.changed then
  A.rapp = g.rapp
end
local st, sp, lk, points  -- points: R's points total, read by check_close for apply_close
-- owed 1 (with closed 1): R's side was done by answer.lua (cross-shard, before this call);
-- only the payer's side is left, then nothing is due.
local answered = g.closed == 1 and g.owed == 1
if g.closed ~= 1 or answered then
  st = check_settle(to)
  if st.err then
    return refuse(st.err)
  end
  if g.payer then
    sp = check_settle_sponsor(g.payer, g.sender)
    if sp.err then
      return refuse(sp.err)
    end
  end
  if d.lucky then
    for k, v in pairs(d.lucky) do
      g[k] = v  -- what the checks below see; apply_decide stores them
    end
  end
  if not answered and to == 'accepted' and g.lucky_bonus and g.lucky_paid == nil then
    -- The promotion account on another node fails this read before any write: the saga.
    lk = check_lucky(g.lucky_payer, g.lucky_ptag, g.recipient, g.kind, g.lucky_bonus)
    if lk.err then
      return refuse(lk.err)
    end
    A.lucky_paid = lk.paid
  end
  if not answered then
    local was = g.state
    g.state = to  -- what close will see
    local bad
    bad, points = check_close(g)
    g.state = was
    if bad then
      return refuse(bad)
    end
  end
end

-- ------------------------------------------------------------ writes
if d.changed then
  apply_decide(g, to, false, d.lucky)
end
if sp and sp.held then
  apply_settle_sponsor(g.payer, g.sender, sp.sp, to)
end
if st and not st.done then
  apply_settle(st.s, to, st.points, st.given)
end
if lk then
  apply_lucky(g.lucky_payer, g.lucky_ptag, g.recipient, g.kind, {gift_id = A.gid, sender = g.sender}, lk)
end
if answered then
  apply_finished(g)
elseif g.closed ~= 1 then
  apply_close(g, points)
end
if d.expired or d.err then
  return refuse(d.err or 'GIFT_EXPIRED', public(g))
end
return reply({gift = public(g), changed = d.changed == true})

#!lua flags=allow-cross-slot-keys
-- send.lua: a whole send in one script, the fast path when the sender's, the recipient's
-- and the payer's slots are on one Redis node (always, on a single Redis). When only the
-- promotion account is elsewhere, it runs too, and answers NEEDS_SAGA before any write if
-- the sender turns out to be a newcomer whose gift the promotion would pay.
--
-- KEYS[1]  {S}:user (routes the call)
-- A        see gift.lua; rate_us, rate_burst: the sender's rate (lib.lua's check_rate);
--          promo_remote: the promotion account is not on this node (the caller's map says so)
--
-- Every check of admit (R), reserve (S) and, for a newcomer's free gift, sponsor (P) runs
-- before the first write; refusals come in the documented order (the first failing rule of
-- either side). A step that an interrupted cross-shard send already made (an admitted offer
-- half, a sponsor's hold) is taken as it is and the send is completed.
-- Returns msgpack {gift} or {err} (a refusal; its gift id is spent for memo_ms, except for
-- IDEMPOTENCY_CONFLICT and the refusals Python found alone).

-- First of all the request counts against the sender's rate: over it, RATE_LIMITED and
-- nothing else is looked at or written (the request may be repeated as it is).
if not check_rate(A.s, A.rate_us, A.rate_burst) then
  return refuse('RATE_LIMITED')
end

-- A refusal Python found alone needs no recipient's side.
local rf = A.pre and {} or check_admit()
local o = rf.existing
local res = check_reserve(rf.err, rf.guard)
local sp
if res.need_sponsor then
  if A.promo_remote then
    -- The promotion account is on another Redis node: a newcomer's free gift takes the
    -- saga. Nothing was written and the rate token is left for the saga to take.
    return cmsgpack.pack({err = 'NEEDS_SAGA'})
  end
  sp = check_sponsor(res.cost)
  A.sponsor = (sp.existing == 'held' or sp.covers) and 'yes' or 'no'
  res = check_reserve(rf.err, rf.guard)
end

if res.err then
  if res.remember then
    remember_refusal(res.err, res.remember, res.until_ms)
  end
  if o and move(o.state, 'void') then
    apply_void(o, res.err)
  end
  return refuse(res.err, nil, res.until_ms)
end

-- ------------------------------------------------------------ writes
local g = res.existing
if g == nil then
  g = res.g
  if o == nil then
    o = apply_admit(false, rf.guard)
  end
  if g.payer and sp.existing ~= 'held' then
    apply_sponsor(g.cost, false)
  end
  apply_reserve(g)
end
if o and move(o.state, 'offer') then
  o = apply_offer(o, g, rf.nodes)
end
-- The offer half decides the state; the send half follows it once settled (awaiting_guardian
-- tells the caller to ask the guardian; the sender is shown it as pending).
if o and o.state ~= 'admitted' and o.state ~= 'void' then
  g.state, g.resolved_at_ms = o.state, o.resolved_at_ms
end
return reply({gift = public(g)})

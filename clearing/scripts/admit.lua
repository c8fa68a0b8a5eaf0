-- admit.lua: send, step 1 of 3 across shards, on the recipient's slot: R's rules; when they
-- pass, R's receive slots are taken and the offer half is written `admitted` (due for
-- recovery: if reserve and offer do not follow in time, the recovery worker finishes or
-- voids it).
--
-- KEYS[1]  {R}:user
-- A        gid, s, r, kind, qty, day, app, stag, rtag, recv_limit, scope, follow_age,
--          saga_ms, quota_ttl, dead, guard (gift.lua)
-- Returns msgpack {state, guard} ('admitted', or the state of an offer half a retry finds;
-- guard: the guardian rule's verdict on R's side, for reserve's A.rguard) or
-- {err = R's first failing rule} with nothing written.

local rf = check_admit()
if rf.err then
  return refuse(rf.err)
end
if rf.existing then
  return reply({state = rf.existing.state, guard = rf.guard})
end
apply_admit(true, rf.guard)
return reply({state = 'admitted', guard = rf.guard})

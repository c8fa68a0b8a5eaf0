-- settle.lua: answer or expiry, step 2 of 3 across shards, on the sender's slot: the send
-- half follows the decision A.to: the hold is settled (when the sender paid), points and
-- counters follow, and the sender is told. Once per gift: a retry finds it done.
--
-- KEYS[1]  {S}:user
-- A        gid, s, to, retention, dead, ep, maxlen; for an accepted gift also
--          rapp, perks (those of the apps with a sender bonus or a joint
--          campaign suffice: the send half's app need not be the offer half's), pointlog_max
-- Returns msgpack {} or {err = SAGA_CONFLICT} (the send half is in another final state:
-- never, while every step applies what the offer half decided).

local st = check_settle(A.to)
if st.err then
  return refuse(st.err)
end
if not st.done then
  apply_settle(st.s, A.to, st.points, st.given)
end
return reply({})

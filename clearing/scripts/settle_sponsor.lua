-- settle_sponsor.lua: answer or expiry of a newcomer's free gift, on the promotion
-- account's slot: its hold follows the decision A.to (accepted: consumed + in transit;
-- otherwise back to its balance), once.
--
-- KEYS[1]  {P}:user
-- A        gid, s, promo, ptag, to, retention
-- Returns msgpack {}.

local c = check_settle_sponsor(A.promo, A.s)
if c.err then
  return refuse(c.err)
end
if c.held then
  apply_settle_sponsor(A.promo, A.s, c.sp, A.to)
end
return reply({})

-- release.lua: a promotion account's hold for a gift that will not be sent (its sender was
-- refused after the hold, or recovery found it abandoned) goes back, once.
--
-- KEYS[1]  {P}:user
-- A        gid, s, promo, ptag, retention
-- Returns msgpack {state}: 'released', or what the hold had already become.

local c = check_settle_sponsor(A.promo, A.s)
if c.err then
  return refuse(c.err)
end
if c.held then
  apply_settle_sponsor(A.promo, A.s, c.sp, 'released')
end
return reply({state = c.sp.state or 'none'})

-- sponsor.lua: send, for a newcomer's free gift, on the promotion account's slot: can it
-- cover the gift, and if A.hold, hold it (once per gift; due back after the window).
--
-- KEYS[1]  {P}:user
-- A        gid, s, r, qty, kind, base, cost, promo, stag, ptag, window, saga_ms, hold
-- Returns msgpack {covers}.

local sp = check_sponsor(A.cost)
if sp.existing then
  return reply({covers = sp.existing == 'held'})
end
if sp.covers and A.hold then
  apply_sponsor(A.cost, true)
end
return reply({covers = sp.covers})

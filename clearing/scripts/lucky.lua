-- lucky.lua: the lucky bonus of an accepted gift across shards, on its payer's slot (the
-- promotion account), between answer (decide) and close: the drawn bonus leaves the payer's balance
-- for transit, or nothing when the payer is short of it; once per gift (a retry or the
-- sweeper reads what was paid).
--
-- KEYS[1]  {P}:user
-- A        gid, s (the sender), r (the recipient), kind, bonus (units drawn), payer, ptag,
--          retention
-- Returns msgpack {paid = units paid} (close credits them) or {err = CORRUPT}.

local c = check_lucky(A.payer, A.ptag, A.r, A.kind, A.bonus)
if c.err then
  return refuse(c.err)
end
apply_lucky(A.payer, A.ptag, A.r, A.kind, {gift_id = A.gid, sender = A.s}, c)
return reply({paid = c.paid})

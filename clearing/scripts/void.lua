-- void.lua: undo an admission whose send will not happen (the sender's side refused it, or
-- the recovery worker found it abandoned): R's slots go back, the offer half is `void`
-- (kept for memo_ms with the reason, so a retry of the same send repeats it).
--
-- KEYS[1]  {R}:user
-- A        gid, r, why (the refusal code), memo_ms
-- Returns msgpack {state}: 'void', or the state of an offer half that had already moved on.

local flat = redis.call('HGETALL', offer_key())
if #flat == 0 then
  return reply({state = 'none'})
end
local o = record(A.gid, flat)
if move(o.state, 'void') then
  apply_void(o, A.why)
end
return reply({state = o.state})

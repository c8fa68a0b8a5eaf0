-- pseudonymise.lua: in the retained halves of gifts kept in one counterparty's slot, replace
-- an erased user's id by the user's pseudonym (clearing/erasure.py, docs/regions.md).
--
-- KEYS[1]  {C}:user (routes the call: C is the counterparty whose slot holds the halves)
-- A        u (the erased user), pseudonym, halves ({key name under C's tag, field}: the field,
--          'sender', 'recipient' or 'guardian', that names u), c (C)
-- A half rewritten for its sender or recipient also loses a `guardian` field naming u.
-- A half that no longer exists (its retention passed) or that does not name u is left as it
-- is: nothing is created. The per-pair receive counters of C that name u are renamed with
-- the halves. Returns msgpack {changed = count}.

local changed = 0
for _, h in ipairs(A.halves) do
  local k = ukey(A.c, h[1])
  local named = redis.call('HMGET', k, h[2], 'day')
  if named[1] == A.u then
    redis.call('HSET', k, h[2], A.pseudonym)
    changed = changed + 1
    if h[2] ~= 'guardian' and redis.call('HGET', k, 'guardian') == A.u then
      redis.call('HSET', k, 'guardian', A.pseudonym)
    end
    -- C's per-pair receive counter of that day names u too: it follows the offer half
    -- (it expires with its day; gift_answer.lua gives slots back under the half's sender).
    local pair = ukey(A.c, 'q:recvp:' .. tostring(named[2]) .. ':' .. A.u)
    if h[2] == 'sender' and named[2] and redis.call('EXISTS', pair) == 1 then
      redis.call('RENAME', pair, ukey(A.c, 'q:recvp:' .. named[2] .. ':' .. A.pseudonym))
    end
  end
end
return reply({changed = changed})

-- erase.lua: GDPR Art. 17 erasure of a user's own slot (docs/regions.md "Erasure"), the last
-- step of clearing/erasure.py, after every pending gift of the user was settled.
--
-- KEYS[1]  {U}:user
-- A        u, tag (U's slot tag), kinds (every card kind), drop (the names of U's other keys
--          to delete, as clearing/erasure.py found them in U's slot), pseudonym
-- Checks, before any write: the account exists; it is not erased already (then the same
-- reply again, nothing written); nothing is pending (no offer in the inbox, nothing held, no
-- gift half among those it would drop still pending, admitted or awaiting a guardian, and
-- no received gift whose answer is still due in U's slot: their counterparty's cards would
-- stay held for ever);
-- every counter it moves reads as a whole number. Then: what remains available of each kind
-- is consumed (ledger `consume`, avail:U -> consumed:T, cause `erased`), so the books stay
-- balanced; U's other keys are deleted; the account hash becomes a tombstone {erased = 1,
-- banned = 1, erased_at_ms, pseudonym, and neutral flags} that refuses every later
-- connection, consent and gift.
-- Returns msgpack {pseudonym, consumed = {kind = units}, erased_at_ms, again} or
-- {err = UNKNOWN_USER | ERASE_PENDING | CORRUPT}.

local key = KEYS[1]
local u = redis.call('HMGET', key, 'created_at_ms', 'erased', 'pseudonym', 'erased_at_ms')
if u[2] == '1' then
  return reply({pseudonym = u[3], consumed = {}, erased_at_ms = whole(u[4] or nil), again = true})
end
if not u[1] then
  return refuse('UNKNOWN_USER')
end
if redis.call('ZCARD', ukey(A.u, 'inbox')) > 0 then
  return refuse('ERASE_PENDING')
end
local final = {accepted = true, declined = true, expired = true, void = true}
for _, name in ipairs(A.drop) do
  if string.sub(name, 1, 5) == 'gift:' or string.sub(name, 1, 6) == 'offer:' then
    local state = redis.call('HGET', ukey(A.u, name), 'state')
    if state and not final[state] then
      return refuse('ERASE_PENDING')
    end
  end
  -- A received gift whose answer is still due (the sender's hold not settled yet): the due
  -- entry's recovery reads this offer half, so it may not go before the saga is finished.
  if string.sub(name, 1, 6) == 'offer:' then
    local id = string.sub(name, 7)
    local due = tkey(A.tag, 'due')
    if redis.call('ZSCORE', due, 'answered|' .. A.u .. '|' .. id)
        or redis.call('ZSCORE', due, 'settle|' .. A.u .. '|' .. id) then
      return refuse('ERASE_PENDING')
    end
  end
end
local counters = {{ukey(A.u, 'bal')}, {ukey(A.u, 'held')}, {tkey(A.tag, 'tot')}}
for _, kind in ipairs(A.kinds) do
  counters[1][#counters[1] + 1] = kind
  counters[2][#counters[2] + 1] = kind
  counters[3][#counters[3] + 1] = 'consumed:' .. kind
end
if corrupt(counters) then
  return refuse('CORRUPT')
end
local consumed = {}
for _, kind in ipairs(A.kinds) do
  if num(redis.call('HGET', ukey(A.u, 'held'), kind)) ~= 0 then
    return refuse('ERASE_PENDING')
  end
  local units = num(redis.call('HGET', ukey(A.u, 'bal'), kind))
  if units < 0 then
    return refuse('CORRUPT')
  end
  consumed[kind] = units
end

-- ------------------------------------------------------------ writes
for _, kind in ipairs(A.kinds) do
  if consumed[kind] > 0 then
    consume_units(A.u, A.tag, kind, consumed[kind], 'erased')
  end
end
for _, name in ipairs(A.drop) do
  redis.call('DEL', ukey(A.u, name))
end
redis.call('DEL', key)
-- The fields every reader of an account expects, with nothing of the person in them.
redis.call('HSET', key, 'erased', '1', 'banned', '1', 'verified', '0', 'vip', '0', 'app', 'main',
           'created_at_ms', NOW, 'erased_at_ms', NOW, 'pseudonym', A.pseudonym)
return reply({pseudonym = A.pseudonym, consumed = consumed, erased_at_ms = NOW, again = false})

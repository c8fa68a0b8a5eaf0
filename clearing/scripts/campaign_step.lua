-- campaign_step.lua: a brand campaign's state, cursor and runner lease, changed atomically
-- (clearing/campaigns.py). Campaign runners on every gateway node race for the lease; the
-- one holding it issues the next batch of gifts and then moves the cursor, and only while
-- its lease is current, so a runner that stalled past its lease cannot move a cursor that
-- another runner has moved since. The gifts themselves are idempotent by (campaign,
-- recipient), so a batch issued twice (a runner died after issuing, before advancing) gives
-- nobody a second card.
--
-- KEYS[1]  {B}:camp:<id>
-- A        act = 'claim': holder, lease_ms. The campaign is running and its lease free,
--                 lapsed or the holder's own: the holder takes it until now + lease_ms.
--                 Returns {next, total, state}, or {err = LEASE_HELD | CAMPAIGN_STATE}.
--          act = 'advance': holder, from, to, lease_ms. The holder's lease is current, the
--                 cursor is at `from` and `to` is past it, at most the total: the cursor
--                 moves to `to`, the lease is renewed, and at the total the campaign is
--                 `done`. Returns {next, state}, or {err = LEASE_LOST}.
--          act = 'release': holder. Gives the lease up if the holder has it. Returns {}.
--          act = 'state': event ('pause' | 'resume' | 'cancel' | 'end'): the move in the
--                 table below. Returns {state}, or {err = UNKNOWN_CAMPAIGN | CAMPAIGN_STATE}.
-- Every stored number is read and checked before the first write; a campaign whose
-- cursor or total does not read is refused (CAMPAIGN_STATE) and changes nothing.

local MOVES_OF = {
  running = {pause = 'paused', cancel = 'cancelled', ['end'] = 'ended'},
  paused = {resume = 'running', cancel = 'cancelled', ['end'] = 'ended'},
}

local c = KEYS[1]
local f = redis.call('HMGET', c, 'state', 'next', 'total', 'holder', 'lease_until')
if not f[1] then
  return refuse('UNKNOWN_CAMPAIGN')
end
local state = f[1]
local nxt, total, lease_until = whole(f[2]), whole(f[3]), whole(f[5])
if nxt == nil or total == nil or lease_until == nil or nxt > total then
  return refuse('CAMPAIGN_STATE')
end
local held_by_other = f[4] and f[4] ~= A.holder and lease_until > NOW

if A.act == 'claim' then
  if state ~= 'running' then
    return refuse('CAMPAIGN_STATE')
  end
  if held_by_other then
    return refuse('LEASE_HELD')
  end
  redis.call('HSET', c, 'holder', A.holder, 'lease_until', NOW + A.lease_ms)
  return reply({next = nxt, total = total, state = state})
end

if A.act == 'advance' then
  if state ~= 'running' or f[4] ~= A.holder or lease_until <= NOW or nxt ~= A.from
      or A.to <= A.from or A.to > total then
    return refuse('LEASE_LOST')
  end
  redis.call('HSET', c, 'next', A.to, 'lease_until', NOW + A.lease_ms)
  if A.to == total then
    state = 'done'
    redis.call('HSET', c, 'state', state, 'finished_at_ms', NOW)
    redis.call('HDEL', c, 'holder', 'lease_until')
  end
  return reply({next = A.to, state = state})
end

if A.act == 'release' then
  if f[4] == A.holder then
    redis.call('HDEL', c, 'holder', 'lease_until')
  end
  return reply({})
end

if A.act == 'state' then
  local target = MOVES_OF[state] and MOVES_OF[state][A.event]
  if not target then
    return refuse('CAMPAIGN_STATE')
  end
  redis.call('HSET', c, 'state', target)
  if target ~= 'running' and target ~= 'paused' then  -- a paused campaign is not finished
    redis.call('HSET', c, 'finished_at_ms', NOW)
  end
  return reply({state = target})
end

return refuse('CAMPAIGN_STATE')

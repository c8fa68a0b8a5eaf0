-- mentor.lua: the steps of a mentor binding, prepended (after lib.lua) to the mentor scripts.
--
-- An apprentice A (a newcomer) binds to a mentor M once; the promotion account P pays both
-- rewards. Across shards: check M (read only) -> bind A (`paying`, due) -> pay at P (both
-- rewards into transit, once) -> credit M -> credit A (`bound`); PROMOTION_EXHAUSTED at P
-- undoes the binding. The fast path runs every check, then every write, in one script.
-- Refusals, in order: UNKNOWN_USER (either), ALREADY_BOUND (A has a mentor, or M is A's
-- own apprentice), NOT_NEWCOMER, PROMOTION_EXHAUSTED.
--
-- A: a, m, p (users), atag, mtag, ptag, kind, mreward, areward, nc_age, saga_ms, retention

local function marker(user)
  return ukey(user, 'credit:mentor:' .. A.a)
end

local function check_mentor_side()
  local m = redis.call('HMGET', ukey(A.m, 'user'), 'created_at_ms', 'mentor')
  if not m[1] then
    return 'UNKNOWN_USER'
  end
  if m[2] == A.a then
    return 'ALREADY_BOUND'
  end
  return nil
end

local function check_apprentice_side(mcode)
  local a = redis.call('HMGET', ukey(A.a, 'user'), 'created_at_ms', 'mentor')
  local code
  if not a[1] then
    code = 'UNKNOWN_USER'
  elseif a[2] then
    code = 'ALREADY_BOUND'
  end
  code = first_refusal(code, mcode)
  if code == nil and NOW - num(a[1]) >= A.nc_age then
    code = 'NOT_NEWCOMER'
  end
  return code
end

local function apply_bind(due)
  -- The rewards are kept with the binding: recovery pays what was promised, whatever the
  -- settings say by then.
  redis.call('HSET', ukey(A.a, 'user'), 'mentor', A.m, 'mentor_state', 'paying', 'mentor_m', A.mreward,
             'mentor_a', A.areward)
  if due then
    redis.call('ZADD', tkey(A.atag, 'due'), NOW + A.saga_ms, 'mentor|' .. A.a .. '|' .. A.m)
    index_due(A.atag, NOW + A.saga_ms)
  end
end

-- Returns 'paid' (already), 'ok' (can pay) or 'PROMOTION_EXHAUSTED'.
local function check_pay()
  if redis.call('EXISTS', marker(A.promo)) == 1 then
    return 'paid'
  end
  local total = A.mreward + A.areward
  if total > 0 and (redis.call('EXISTS', ukey(A.promo, 'user')) == 0
      or num(redis.call('HGET', ukey(A.promo, 'bal'), A.kind)) < total) then
    return 'PROMOTION_EXHAUSTED'
  end
  if corrupt({{ukey(A.promo, 'bal'), A.kind}, {tkey(A.ptag, 'tot'), 'transit:' .. A.kind}}) then
    return 'CORRUPT'
  end
  return 'ok'
end

local function apply_pay()
  local total = A.mreward + A.areward
  if total > 0 then
    pay_units(A.promo, A.ptag, A.kind, total, nil, 'mentor_pay', 'mentor:' .. A.a)
  end
  redis.call('SET', marker(A.promo), total, 'PX', A.retention)
end

-- Whether a reward can be credited: its counters read (checked before any write).
local function creditable(user, tag)
  return not corrupt({{ukey(user, 'bal'), A.kind}, {tkey(tag, 'tot'), 'transit:' .. A.kind}})
end

-- A reward leaves transit for the user's balance, once.
local function apply_credit(user, tag, amount)
  if redis.call('EXISTS', marker(user)) == 1 then
    return
  end
  if amount > 0 then
    credit_units(user, tag, A.kind, amount, nil, 'mentor_credit', 'mentor:' .. A.a)
  end
  redis.call('SET', marker(user), amount, 'PX', A.retention)
end

local function apply_finish()
  redis.call('HSET', ukey(A.a, 'user'), 'mentor_state', 'bound')
  redis.call('ZREM', tkey(A.atag, 'due'), 'mentor|' .. A.a .. '|' .. A.m)
end

local function apply_unbind()
  redis.call('HDEL', ukey(A.a, 'user'), 'mentor', 'mentor_state', 'mentor_m', 'mentor_a')
  redis.call('ZREM', tkey(A.atag, 'due'), 'mentor|' .. A.a .. '|' .. A.m)
end

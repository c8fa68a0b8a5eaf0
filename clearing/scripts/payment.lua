-- payment.lua: a payment provider's signed notification, on the user's slot (clearing/purchases.py):
--   A.what 'purchase': new cards bought, minted to the user once per (provider, payment id);
--   A.what 'refund':   the payment refunded: what is still available of it is clawed back
--                      (never below zero), once; what was already spent is recorded as short,
--                      and the user's risk hash gets the flag refund_short (units, summed).
--
-- KEYS[1]  {U}:user
-- A        u, tag, what, provider, pid (the provider's payment id), kind, units (purchase),
--          deny (purchase: region -> true where the region's rule does not allow the
--          provider), ceiling (2^53 - 1)
-- Returns msgpack {state, kind, units, clawed, short, replayed} or {err = UNKNOWN_USER |
-- PROVIDER_NOT_ALLOWED | IDEMPOTENCY_CONFLICT | UNKNOWN_PAYMENT | BAD_QUANTITY | CORRUPT}.
-- Nothing is written before every check has passed.

local user = ukey(A.u, 'user')
if redis.call('EXISTS', user) == 0 then
  return refuse('UNKNOWN_USER')
end
local rec_key = ukey(A.u, 'pay:' .. A.provider .. ':' .. A.pid)
local rec = {}
local flat = redis.call('HGETALL', rec_key)
for i = 1, #flat, 2 do
  rec[flat[i]] = flat[i + 1]
end
local cause = 'pay:' .. A.provider .. ':' .. A.pid

local function result(replayed)
  return reply({state = rec.state, kind = rec.kind, units = num(rec.units), clawed = num(rec.clawed),
                short = num(rec.short), replayed = replayed})
end

if A.what == 'purchase' then
  if rec.state then
    if rec.kind ~= A.kind or num(rec.units) ~= A.units then
      return refuse('IDEMPOTENCY_CONFLICT')  -- the same payment id with another content
    end
    return result(true)
  end
  local region = redis.call('HGET', user, 'region') or 'global'
  if type(A.deny) == 'table' and A.deny[region] then
    return refuse('PROVIDER_NOT_ALLOWED')
  end
  local bal, tot = ukey(A.u, 'bal'), tkey(A.tag, 'tot')
  if corrupt({{bal, A.kind}, {tot, 'minted:' .. A.kind}}) then
    return refuse('CORRUPT')
  end
  if num(redis.call('HGET', bal, A.kind)) + A.units > A.ceiling
      or num(redis.call('HGET', tot, 'minted:' .. A.kind)) + A.units > A.ceiling then
    return refuse('BAD_QUANTITY')
  end
  -- ------------------------------------------------------------ writes
  redis.call('HINCRBY', bal, A.kind, A.units)
  add_total(A.tag, 'minted', A.kind, A.units)
  ledger(A.tag, 'purchase', 'issued:' .. A.tag, 'avail:' .. A.u, A.kind, A.units, nil, cause)
  rec = {state = 'paid', kind = A.kind, units = A.units, clawed = 0, short = 0}
  redis.call('HSET', rec_key, 'state', 'paid', 'kind', A.kind, 'units', A.units, 'paid_ms', NOW)
  return result(false)
end

if A.what == 'refund' then
  if not rec.state or not rec.kind or whole(rec.units) == nil then
    return refuse('UNKNOWN_PAYMENT')
  end
  if rec.state == 'refunded' then
    return result(true)
  end
  local bal, tot = ukey(A.u, 'bal'), tkey(A.tag, 'tot')
  if corrupt({{bal, rec.kind}, {tot, 'minted:' .. rec.kind}, {ukey(A.u, 'risk'), 'refund_short'}}) then
    return refuse('CORRUPT')
  end
  local units = num(rec.units)
  local clawed = math.min(units, math.max(0, num(redis.call('HGET', bal, rec.kind))))
  local short = units - clawed
  -- ------------------------------------------------------------ writes
  if clawed > 0 then
    redis.call('HINCRBY', bal, rec.kind, -clawed)
    add_total(A.tag, 'minted', rec.kind, -clawed)
    ledger(A.tag, 'refund', 'avail:' .. A.u, 'issued:' .. A.tag, rec.kind, clawed, nil, cause)
  end
  if short > 0 then
    redis.call('HINCRBY', ukey(A.u, 'risk'), 'refund_short', short)
    redis.call('HSET', ukey(A.u, 'risk'), 'refund_short_ms', NOW)
  end
  redis.call('HSET', rec_key, 'state', 'refunded', 'clawed', clawed, 'short', short, 'refunded_ms', NOW)
  rec.state, rec.clawed, rec.short = 'refunded', clawed, short
  return result(false)
end
return refuse('BAD_REQUEST')

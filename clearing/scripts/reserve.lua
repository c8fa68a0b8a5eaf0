-- reserve.lua: offer a gift; the cost leaves the sender's balance and is held.
--
-- KEYS[1]  the gift hash ({p}:gift:<gift_id>)
-- ARGV[1..7] common header (lib.lua)
-- ARGV[8]  gift_id         ARGV[9]  sender        ARGV[10] recipient   ARGV[11] kind
-- ARGV[12] qty             ARGV[13] cost          ARGV[14] amount
-- ARGV[15] precheck: a refusal code Python found without Redis (SELF_GIFT, UNKNOWN_KIND,
--          BAD_QUANTITY) or "". It is raised here, after the idempotency check, so that a
--          retry with a conflicting payload answers IDEMPOTENCY_CONFLICT whatever its fields.
-- ARGV[16] quota day (YYYYMMDD in the platform zone, computed by the caller)
-- ARGV[17] daily_send_limit  ARGV[18] vip_send_bonus  ARGV[19] daily_receive_limit
-- ARGV[20] receive_limit_scope ("recipient" | "pair")
-- ARGV[21] follow_min_age_ms  ARGV[22] confirm_window_ms
--
-- Returns msgpack {gift = record} or {err = code} (IDEMPOTENCY_CONFLICT has no gift).
-- A gift id that exists with the same sender, recipient, kind and qty returns the stored
-- record as it is now, in any state, and writes nothing.
--
-- Invariants kept: every check runs before the first write; cost moves from bal to held
-- and holds_total by the same amount; the gift sits in pending and the recipient's inbox
-- with score = expires_at_ms; the send, receive and pair counters of the day are all
-- incremented (whatever the configured scope, so a scope change keeps counts right), each
-- with a PEXPIRE so no counter outlives its use.

local gift_key = KEYS[1]
local gift_id, sender, recipient, kind = ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local qty, cost, amount = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])
local precheck, day = ARGV[15], ARGV[16]
local send_limit, vip_bonus = tonumber(ARGV[17]), tonumber(ARGV[18])
local receive_limit, receive_scope = tonumber(ARGV[19]), ARGV[20]
local follow_min_age, confirm_window = tonumber(ARGV[21]), tonumber(ARGV[22])

local existing = redis.call('HGETALL', gift_key)
if #existing > 0 then
  local g = gift_map(gift_id, existing)
  if g.sender == sender and g.recipient == recipient and g.kind == kind and g.qty == qty then
    return reply({gift = g})
  end
  return refuse('IDEMPOTENCY_CONFLICT')
end
if precheck ~= '' then
  return refuse(precheck)
end

-- created_at_ms is always set on a user, so its absence means no such user.
local s = redis.call('HMGET', K.user(sender), 'created_at_ms', 'verified', 'vip', 'banned')
local r = redis.call('HMGET', K.user(recipient), 'created_at_ms', 'banned')
if not s[1] or not r[1] then
  return refuse('UNKNOWN_USER')
end
if s[4] == '1' then
  return refuse('SENDER_BANNED')
end
if r[2] == '1' then
  return refuse('RECIPIENT_BANNED')
end
if s[2] ~= '1' then
  return refuse('NOT_VERIFIED')
end
if redis.call('SISMEMBER', K.blocks(sender), recipient) == 1
    or redis.call('SISMEMBER', K.blocks(recipient), sender) == 1 then
  return refuse('BLOCKED')
end

local newest_allowed = NOW - follow_min_age
local out_since = redis.call('HGET', K.follows(sender), recipient)
local in_since = redis.call('HGET', K.follows(recipient), sender)
if not out_since or not in_since
    or tonumber(out_since) > newest_allowed or tonumber(in_since) > newest_allowed then
  return refuse('NOT_MUTUAL_3D')
end

local send_key = K.send_quota(day, sender)
local recv_key = K.recv_quota(day, recipient)
local pair_key = K.pair_quota(day, recipient, sender)
local limit = send_limit
if s[3] == '1' then
  limit = limit + vip_bonus
end
if tonumber(redis.call('GET', send_key) or '0') >= limit then
  return refuse('LIMIT_DAILY_SEND')
end
local scoped_key = recv_key
if receive_scope == 'pair' then
  scoped_key = pair_key
end
if tonumber(redis.call('GET', scoped_key) or '0') >= receive_limit then
  return refuse('LIMIT_DAILY_RECEIVE')
end

if tonumber(redis.call('HGET', K.bal(sender), kind) or '0') < cost then
  return refuse('INSUFFICIENT_BALANCE')
end
local nodes = live_nodes(recipient)
if #nodes == 0 then
  return refuse('RECIPIENT_OFFLINE')
end

-- ------------------------------------------------------------ writes (nothing can fail now)
redis.call('HINCRBY', K.bal(sender), kind, -cost)
redis.call('HINCRBY', K.held(sender), kind, cost)
redis.call('HINCRBY', K.holds(), kind, cost)

local expires = NOW + confirm_window
redis.call('HSET', gift_key,
  'sender', sender, 'recipient', recipient, 'kind', kind, 'qty', qty, 'cost', cost,
  'amount', amount, 'state', 'pending', 'created_at_ms', NOW, 'expires_at_ms', expires,
  'day', day)
redis.call('ZADD', K.pending(), expires, gift_id)
redis.call('ZADD', K.inbox(recipient), expires, gift_id)
for _, key in ipairs({send_key, recv_key, pair_key}) do
  redis.call('INCR', key)
  redis.call('PEXPIRE', key, QUOTA_TTL)
end

local gift = {gift_id = gift_id, sender = sender, recipient = recipient, kind = kind, qty = qty,
              cost = cost, amount = amount, state = 'pending', created_at_ms = NOW,
              expires_at_ms = expires}
emit(recipient, 'offer', gift, nodes)
return reply({gift = gift})

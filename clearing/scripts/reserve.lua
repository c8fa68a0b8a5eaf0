-- reserve.lua: offer a gift; the cost leaves the sender's balance and is held.
--
-- KEYS[1]  the gift hash ({p}:gift:<gift_id>)
-- ARGV[1..7] common header (lib.lua)
-- ARGV[8]  gift_id         ARGV[9]  sender        ARGV[10] recipient   ARGV[11] kind
-- ARGV[12] qty             ARGV[13] cost          ARGV[14] amount
-- ARGV[15] precheck: a refusal code Python found without Redis (SELF_GIFT, UNKNOWN_KIND,
--          BAD_QUANTITY) or "". It is raised here, after the idempotency check, so that a
--          retry with a conflicting payload answers IDEMPOTENCY_CONFLICT whatever its fields;
--          it is not remembered (see below).
-- ARGV[16] quota day (YYYYMMDD in the platform zone, computed by the caller)
-- ARGV[17] daily_send_limit  ARGV[18] vip_send_bonus  ARGV[19] daily_receive_limit
-- ARGV[20] receive_limit_scope ("recipient" | "pair")
-- ARGV[21] follow_min_age_ms  ARGV[22] confirm_window_ms
-- ARGV[23] the sender's app (from the connection's token)
-- ARGV[24] the default scene settings as JSON (used while none are stored)
-- ARGV[25] live-room quote id or "" (clearing/rooms.py)
-- ARGV[26] refusal memory ms (GiftRules.refusal_memory_ms, > 0)
-- ARGV[27] the sender's request rate: us per request, or '0' for no limit (lib.lua's
--          take_rate)   ARGV[28] its burst
--
-- Scenes (gift-rules.md section 3; prices in clearing/scene_config.py): ARGV[13] and [14]
-- are the base price (qty * units_per_card). During a festival window the cost is
-- ceil(base * permille / 1000); with a quote, the quote's cost (festival and viewer tier
-- included when it was given). The recipient is credited `amount` = base. A newcomer's
-- first free gifts are paid by the promotion account when it can cover them (else the
-- sender pays): that account is the gift's `payer`, holds the cost, and gets it back on
-- decline or expiry. After LIMIT_DAILY_RECEIVE and before INSUFFICIENT_BALANCE a quoted
-- gift may be refused QUOTE_EXPIRED (unknown, used or lapsed) or QUOTE_MISMATCH (another
-- sender, recipient, kind or qty). A quote is used up by the gift it priced.
--
-- Stored data that is not as these scripts write it (lib.lua, "Stored values") refuses
-- rather than fail half-way: a follow start that is no whole number is no follow
-- (NOT_MUTUAL_3D), a quota counter that is none is full (LIMIT_DAILY_*), a quote that is
-- not as quote.lua writes it is no quote (QUOTE_EXPIRED), a festival or setting that does
-- not read prices as if absent (the setting's default), an account age or free-gift count
-- that is none makes no newcomer; a balance or hold that is none stops the script with a
-- CORRUPT error before any write.
--
-- Returns msgpack {gift = record} or {err = code} (IDEMPOTENCY_CONFLICT has no gift).
-- First of all the request counts against the sender's rate: over it, RATE_LIMITED and
-- nothing else is looked at or written (the request may be repeated as it is).
-- A gift id that exists with the same sender, recipient, kind and qty returns the stored
-- record as it is now, in any state, and writes nothing (a stored record that is not
-- well_formed matches no request). A refusal is remembered for ARGV[26] ms
-- ({p}:refused:<gift_id>): the same request with the same id gets the same refusal,
-- another payload IDEMPOTENCY_CONFLICT; a refusal of ARGV[15] writes nothing.
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
local app, quote_id, refusal_memory = ARGV[23], ARGV[25], ARGV[26]

if not take_rate(sender, ARGV[27], ARGV[28]) then
  return refuse('RATE_LIMITED')
end

local existing = redis.call('HGETALL', gift_key)
if #existing > 0 then
  local g, _, numbers_ok = gift_map(gift_id, existing)
  if well_formed(g, numbers_ok) and g.sender == sender and g.recipient == recipient and g.kind == kind
      and g.qty == qty then
    return reply({gift = g})
  end
  return refuse('IDEMPOTENCY_CONFLICT')
end

-- A refusal is an outcome too, and final for its gift id while a copy of the request can
-- still arrive: a duplicate (resent after a reconnect, or delayed on a dying connection)
-- answers the same refusal instead of creating the gift the client was told was refused.
-- A new attempt takes a new gift id (docs/protocol.md section 9), so the memory only has to
-- outlast the copies still on their way (ARGV[26], see GiftRules), not an hour per refusal.
local refusal_key = key('refused', gift_id)
local fingerprint = table.concat({sender, recipient, kind, qty}, '|')
local remembered = redis.call('HMGET', refusal_key, 'code', 'fp')
if remembered[1] then
  if remembered[2] == fingerprint then
    return refuse(remembered[1])
  end
  return refuse('IDEMPOTENCY_CONFLICT')
end

-- A precheck refusal follows from the request alone: every copy gets it again with no
-- memory, so it writes nothing (one account could otherwise fill Redis with them).
if precheck ~= '' then
  return refuse(precheck)
end
local refuse_once = refuse
refuse = function(code)
  redis.call('HSET', refusal_key, 'code', code, 'fp', fingerprint)
  redis.call('PEXPIRE', refusal_key, refusal_memory)
  return refuse_once(code)
end

-- created_at_ms is always set on a user, so its absence means no such user.
local s = redis.call('HMGET', key('user', sender), 'created_at_ms', 'verified', 'vip', 'banned')
local r = redis.call('HMGET', key('user', recipient), 'created_at_ms', 'banned')
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
if redis.call('SISMEMBER', key('blocks', sender), recipient) == 1
    or redis.call('SISMEMBER', key('blocks', recipient), sender) == 1 then
  return refuse('BLOCKED')
end

local newest_allowed = NOW - follow_min_age
-- a start that is no whole number is no follow
local out_since = whole(redis.call('HGET', key('follows', sender), recipient))
local in_since = whole(redis.call('HGET', key('follows', recipient), sender))
if not out_since or not in_since or out_since > newest_allowed or in_since > newest_allowed then
  return refuse('NOT_MUTUAL_3D')
end

local send_key, recv_key, pair_key = quota_keys(day, sender, recipient)
local limit = send_limit
if s[3] == '1' then
  limit = limit + vip_bonus
end
-- All three are read, though only two are limits: all three are incremented below, which
-- a counter holding no whole number would make fail half-way; such a counter is full.
local counts = redis.call('MGET', send_key, recv_key, pair_key)  -- an absent counter reads false
local sent, received, paired = whole(counts[1] or 0), whole(counts[2] or 0), whole(counts[3] or 0)
local scoped = received
if receive_scope == 'pair' then
  scoped = paired
end
if not sent or sent >= limit then
  return refuse('LIMIT_DAILY_SEND')
end
if not received or not paired or scoped >= receive_limit then
  return refuse('LIMIT_DAILY_RECEIVE')
end

local scenes = scene_reader()
local festival, permille = scenes.festival()
if festival then
  cost = scenes.per_mille(amount, permille, true)  -- above MAX_SAFE no balance covers it
end
local room
if quote_id ~= '' then
  local q = redis.call('HMGET', key('quote', quote_id), 'sender', 'recipient', 'kind', 'qty', 'cost',
                       'expires_at_ms', 'room')
  local expires_at = whole(q[6])
  if not q[1] or not expires_at or NOW >= expires_at then
    return refuse('QUOTE_EXPIRED')
  end
  if q[1] ~= sender or q[2] ~= recipient or q[3] ~= kind or whole(q[4]) ~= qty then
    return refuse('QUOTE_MISMATCH')
  end
  -- A quote that is not as quote.lua writes it is no quote: a cost below the amount would
  -- credit the recipient more than the sender paid.
  cost, room = whole(q[5]), q[7]
  if not cost or cost < amount or not scenes.is_id(room) then
    return refuse('QUOTE_EXPIRED')
  end
end

local payer = sender
local newcomer_age, free_gifts, promo = scenes.values(scenes.doc(ARGV[24]), ARGV[24], 'newcomer_age_ms', 'newcomer_free_gifts',
                                                     'promo_account')
-- an age or a free-gift count that is no whole number: not a newcomer, no free gift left
local created_at = whole(s[1])
if created_at and NOW - created_at < newcomer_age and promo ~= sender and promo ~= recipient
    and (whole(redis.call('GET', key('free', sender)) or 0) or free_gifts) < free_gifts
    and redis.call('EXISTS', key('user', promo)) == 1
    and (whole(redis.call('HGET', key('bal', promo), kind) or 0) or 0) >= cost then
  payer = promo
end
local balance = whole(redis.call('HGET', key('bal', payer), kind) or 0)
if not balance then
  return corrupt(key('bal', payer))
end
if balance < cost then
  return refuse('INSUFFICIENT_BALANCE')
end
local nodes = live_nodes(recipient)
if #nodes == 0 then
  return refuse('RECIPIENT_OFFLINE')
end
local bad_counter, apply_moves = counter_mover()
local moves = {{key('bal', payer), kind, -cost, balance}, {key('held', payer), kind, cost}, {key('holds'), kind, cost}}
local bad = bad_counter(moves)
if bad then
  return corrupt(bad)
end

-- ------------------------------------------------------------ writes (nothing can fail now)
apply_moves(moves)
if payer ~= sender then
  redis.call('INCR', key('free', sender))
end
if quote_id ~= '' then
  redis.call('DEL', key('quote', quote_id))
end

local expires = NOW + confirm_window
redis.call('HSET', gift_key,
  'sender', sender, 'recipient', recipient, 'kind', kind, 'qty', qty, 'cost', cost,
  'amount', amount, 'state', 'pending', 'created_at_ms', NOW, 'expires_at_ms', expires,
  'day', day, 'app', app)
local gift = {gift_id = gift_id, sender = sender, recipient = recipient, kind = kind, qty = qty,
              cost = cost, amount = amount, state = 'pending', created_at_ms = NOW,
              expires_at_ms = expires, app = app}
-- Optional fields are stored only when set: an absent field reads as nil in gift_map.
for field, value in pairs({payer = payer ~= sender and payer or nil, festival = festival, room = room}) do
  redis.call('HSET', gift_key, field, value)
  gift[field] = value
end
redis.call('ZADD', key('pending'), expires, gift_id)
redis.call('ZADD', key('inbox', recipient), expires, gift_id)
for _, counter in ipairs({send_key, recv_key, pair_key}) do
  redis.call('INCR', counter)
  redis.call('PEXPIRE', counter, QUOTA_TTL)
end

emit(recipient, 'offer', gift, nodes)
return reply({gift = gift})

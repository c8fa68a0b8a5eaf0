-- gift.lua: the steps of a gift, prepended (after lib.lua) to the scripts that move gifts.
--
-- A gift has two halves (clearing/keys.py): the send half with the sender S
-- ({S}:gift:<id>: idempotency, the hold when S pays, S's counter) and the offer half with the
-- recipient R ({R}:offer:<id>: the decision, the window, R's counters, the credit). A newcomer's
-- free gift has a third part with its payer P, the promotion account ({P}:sponsor:<S>|<id>: the
-- hold). Each step is a check_* function (reads, decides, computes) and an apply_* function
-- (writes only, nothing there can fail). A step script runs one check and its apply; a
-- fast-path script (every part on one Redis node) runs all checks first, then all applies,
-- which is one atomic gift exactly as if there were no sagas.
--
-- Arguments (A), as clearing/gifts.py sends them:
--   gid, s, r, kind, qty, day, app; stag, rtag, ptag: slot tags of S, R and P
--   base: qty * units_per_card (what R is credited); cost: base priced by the festival
--   festival: its id, or nil; quote: a quote id, or nil; window: confirm window ms
--   send_limit, vip_bonus, recv_limit, scope ('recipient'|'pair'), follow_age: the rules
--   promo, nc_age, nc_free: the promotion account (nil: no newcomer gifts), newcomer rules
--   pre: a refusal Python found without Redis (SELF_GIFT...), raised after idempotency
--   memo_ms: how long a refused gift id stays spent; retention: how long a resolved gift
--   is kept; saga_ms: how long a step may stay unfinished before recovery takes it over
--   perks: {per_card, apps = {app = {sender_bonus, recipient_mult, joint}}}
--   dead, ep, maxlen, quota_ttl, pointlog_max: see lib.lua
--   dev: the sender's device fingerprint, or nil; rl_daily, rl_rooms: what a user of the
--   risk engine's limited tier may still do (gifts a day; 1: live-room gifts allowed)

local SEND_FIELDS = {'sender', 'recipient', 'kind', 'qty', 'cost', 'amount', 'state', 'created_at_ms',
                     'expires_at_ms', 'day', 'app', 'payer', 'festival', 'room', 'stag', 'rtag', 'ptag'}
local OFFER_FIELDS = {'sender', 'recipient', 'kind', 'qty', 'cost', 'amount', 'state', 'created_at_ms',
                      'expires_at_ms', 'day', 'app', 'payer', 'festival', 'room', 'stag', 'rtag', 'ptag'}

local function send_key()
  return ukey(A.s, 'gift:' .. A.gid)
end
local function offer_key(r)
  return ukey(r or A.r, 'offer:' .. A.gid)
end
local function sponsor_key(p, s)
  return ukey(p, 'sponsor:' .. s .. '|' .. A.gid)
end
local function recv_counters(day, r, s)
  return ukey(r, 'q:recv:' .. day), ukey(r, 'q:recvp:' .. day .. ':' .. s)
end
-- R's two receive counters of a gift, as corrupt() takes them.
local function slot_counters(g)
  local recv, pair = recv_counters(g.day, g.recipient, g.sender)
  return {{recv}, {pair}}
end

-- A gift half whose numbers read (a hand edit could leave one that does not).
local function well_formed(g)
  return g.qty and g.cost and g.amount and g.created_at_ms and g.expires_at_ms and g.sender and g.recipient
    and g.kind and g.day and true or false
end

-- The counters a settle or close will change: {key} or {key, field} entries.
local function money_counters(user, tag, kind, points)
  local out = {{ukey(user, 'bal'), kind}, {ukey(user, 'held'), kind}, {tkey(tag, 'tot'), 'holds:' .. kind},
               {tkey(tag, 'tot'), 'consumed:' .. kind}, {tkey(tag, 'tot'), 'transit:' .. kind}}
  if points then
    out[#out + 1] = {ukey(user, 'points'), 'total'}
    out[#out + 1] = {ukey(user, 'points'), 'trimmed'}
  end
  return out
end

-- The risk engine's verdict on a user ({U}:risk, written by risk/actions.py), read in the same
-- step as the user's other rules: frozen_until (ms; nil when not frozen, -1 when frozen with an
-- end that does not read: a hand edit must not thaw an account), limited (the low tier's
-- behaviour limits), whether the device `dev` (copied there at hello and when the device is
-- banned, so no other slot is read) is banned, and whether the account is banned (the top
-- tier: gifts refused as for a banned account, while the user may still connect to appeal).
local function risk_of(user, dev)
  local r = redis.call('HMGET', ukey(user, 'risk'), 'frozen_until', 'limited', 'dev:' .. (dev or ''), 'banned')
  local frozen
  if r[1] then
    local u = whole(r[1])
    if u == nil then
      frozen = -1
    elseif u > NOW then
      frozen = u
    end
  end
  return frozen, r[2] == '1', dev ~= nil and r[3] == '1', r[4] == '1'
end

local function same_gift(g)
  return g.sender == A.s and g.recipient == A.r and g.kind == A.kind and g.qty == A.qty
end

-- ================================================================ send: the recipient's side
-- admit: R's rules (R exists, not banned, has not blocked S, follows S for long enough, has a
-- receive slot left, is online). Returns {err} (nothing to write), {existing = offer half}
-- (a retry), or {nodes} (admit).
local function check_admit()
  local flat = redis.call('HGETALL', offer_key())
  if #flat > 0 then
    local o = record(A.gid, flat)
    if not same_gift(o) then
      return {err = 'IDEMPOTENCY_CONFLICT'}
    end
    if o.state == 'void' then
      return {err = o.why or 'SEND_ABORTED'}
    end
    return {existing = o}
  end
  local r = redis.call('HMGET', ukey(A.r, 'user'), 'created_at_ms', 'banned')
  if not r[1] then
    return {err = 'UNKNOWN_USER'}
  end
  local rfrozen, _, _, rbanned = risk_of(A.r, nil)
  if r[2] == '1' or rbanned then
    return {err = 'RECIPIENT_BANNED'}
  end
  -- The recipient's freeze end is not the sender's business: no time goes with this code.
  if rfrozen then
    return {err = 'RECIPIENT_FROZEN'}
  end
  if redis.call('SISMEMBER', ukey(A.r, 'blocks'), A.s) == 1 then
    return {err = 'BLOCKED'}
  end
  local since = redis.call('HGET', ukey(A.r, 'follows'), A.s)
  if not since or num(since) > NOW - A.follow_age then
    return {err = 'NOT_MUTUAL_3D'}
  end
  -- A counter that holds no whole number counts as full: nothing could add to it.
  local counts = redis.call('MGET', recv_counters(A.day, A.r, A.s))
  local recv, pair = whole(counts[1] or nil), whole(counts[2] or nil)
  local used = A.scope == 'pair' and pair or recv
  if recv == nil or pair == nil or used >= A.recv_limit then
    return {err = 'LIMIT_DAILY_RECEIVE'}
  end
  local nodes = live_nodes(A.r)
  if #nodes == 0 then
    return {err = 'RECIPIENT_OFFLINE'}
  end
  return {nodes = nodes}
end

-- Take R's receive slots and write the offer half, `admitted`; due for recovery unless the
-- offer follows in this same script.
local function apply_admit(due)
  local recv, pair = recv_counters(A.day, A.r, A.s)
  take_slot(recv)
  take_slot(pair)
  local o = {sender = A.s, recipient = A.r, kind = A.kind, qty = A.qty, state = 'admitted', day = A.day,
             app = A.app, stag = A.stag, rtag = A.rtag}
  store(offer_key(), o, OFFER_FIELDS)
  if due then
    redis.call('ZADD', tkey(A.rtag, 'due'), NOW + A.saga_ms, 'admit|' .. A.r .. '|' .. A.gid)
  end
  return o
end

-- ================================================================ send: the sender's side
-- reserve: idempotency, then S's rules, merged with R's refusal (rcode) in the documented
-- order. Returns {err, remember}, {existing = send half}, {need_sponsor = true} (the answer
-- depends on whether the promotion account covers the gift: ask it, then call again with
-- A.sponsor = 'yes' | 'no'), or {g = the send half to write, payer}.
local function check_reserve(rcode)
  local flat = redis.call('HGETALL', send_key())
  if #flat > 0 then
    local g = record(A.gid, flat)
    if not same_gift(g) then
      return {err = 'IDEMPOTENCY_CONFLICT'}
    end
    if g.state == 'void' then
      return {err = g.why or 'SEND_ABORTED'}
    end
    return {existing = g}
  end
  -- A refused gift id is spent for memo_ms: the same request repeats the refusal, so a late
  -- duplicate cannot create a gift its client was told was refused (docs/protocol.md).
  local fingerprint = A.r .. '|' .. A.kind .. '|' .. A.qty
  local memo = redis.call('HMGET', ukey(A.s, 'refused:' .. A.gid), 'code', 'fp', 'until')
  if memo[1] then
    if memo[2] ~= fingerprint then
      return {err = 'IDEMPOTENCY_CONFLICT'}
    end
    return {err = memo[1], until_ms = memo[1] == 'ACCOUNT_FROZEN' and whole(memo[3] or nil) or nil}
  end
  if A.pre or rcode == 'IDEMPOTENCY_CONFLICT' then
    return {err = A.pre or rcode}  -- needs no state: not remembered
  end

  local s = redis.call('HMGET', ukey(A.s, 'user'), 'created_at_ms', 'verified', 'vip', 'banned')
  local frozen, limited, dev_banned, rbanned = risk_of(A.s, A.dev)
  local code, until_ms
  if not s[1] then
    code = 'UNKNOWN_USER'
  elseif s[4] == '1' or rbanned then
    code = 'SENDER_BANNED'
  elseif dev_banned then
    code = 'DEVICE_BANNED'
  elseif frozen then
    code, until_ms = 'ACCOUNT_FROZEN', frozen > 0 and frozen or nil
  elseif s[2] ~= '1' then
    code = 'NOT_VERIFIED'
  elseif redis.call('SISMEMBER', ukey(A.s, 'blocks'), A.r) == 1 then
    code = 'BLOCKED'
  end
  if code == nil then
    local since = redis.call('HGET', ukey(A.s, 'follows'), A.r)
    local limit = A.send_limit + (s[3] == '1' and A.vip_bonus or 0)
    if not since or num(since) > NOW - A.follow_age then
      code = 'NOT_MUTUAL_3D'
    else
      local sent = whole(redis.call('GET', ukey(A.s, 'q:send:' .. A.day)) or nil)
      if sent == nil or sent >= limit then
        code = 'LIMIT_DAILY_SEND'  -- a counter that holds no whole number counts as full
      elseif limited and (sent >= A.rl_daily or (A.quote and A.rl_rooms ~= 1)) then
        code = 'RISK_LIMITED'  -- the low tier's behaviour limits, instead of a refusal of all
      end
    end
  end
  code = first_refusal(code, rcode)
  if code and RANK[code] < RANK.QUOTE_EXPIRED then
    return {err = code, remember = fingerprint, until_ms = code == 'ACCOUNT_FROZEN' and until_ms or nil}
  end

  local cost, room = A.cost, nil
  if A.quote then
    local q = redis.call('HMGET', ukey(A.s, 'quote:' .. A.quote), 'recipient', 'kind', 'qty', 'cost',
                         'expires_at_ms', 'amount')
    -- A quote that does not read as rooms.py writes it (a cost below what the recipient
    -- gets, say) is no quote.
    local qcost, expires, qamount = whole(q[4] or nil), whole(q[5] or nil), whole(q[6] or nil)
    if not q[1] or not qcost or not expires or not qamount or qcost < qamount or NOW >= expires then
      return {err = 'QUOTE_EXPIRED', remember = fingerprint}
    end
    -- the same recipient, kind and quantity give the same amount: the quote's cost covers it
    if q[1] ~= A.r or q[2] ~= A.kind or whole(q[3] or nil) ~= A.qty or qamount ~= A.base then
      return {err = 'QUOTE_MISMATCH', remember = fingerprint}
    end
    cost, room = qcost, A.r
  end

  local payer = A.s
  -- An account age or free-gift count that does not read makes no newcomer.
  local free = whole(redis.call('GET', ukey(A.s, 'free')) or nil)
  if A.promo and A.promo ~= A.s and A.promo ~= A.r and whole(s[1]) and NOW - whole(s[1]) < A.nc_age
      and free and free < A.nc_free then
    if A.sponsor == nil then
      return {need_sponsor = true, cost = cost}
    end
    if A.sponsor == 'yes' then
      payer = A.promo
    end
  end
  if payer == A.s and num(redis.call('HGET', ukey(A.s, 'bal'), A.kind)) < cost then
    code = first_refusal('INSUFFICIENT_BALANCE', code)
  end
  if code then
    return {err = code, remember = fingerprint}
  end
  if payer == A.s and corrupt({{ukey(A.s, 'bal'), A.kind}, {ukey(A.s, 'held'), A.kind},
                               {tkey(A.stag, 'tot'), 'holds:' .. A.kind}}) then
    return {err = 'CORRUPT'}
  end
  local g = {gift_id = A.gid, sender = A.s, recipient = A.r, kind = A.kind, qty = A.qty, cost = cost,
             amount = A.base, state = 'pending', created_at_ms = NOW, expires_at_ms = NOW + A.window,
             day = A.day, app = A.app, payer = payer ~= A.s and payer or nil, festival = A.festival,
             room = room, stag = A.stag, rtag = A.rtag, ptag = payer ~= A.s and A.ptag or nil}
  return {g = g}
end

-- Remember a refusal for the gift id (see check_reserve).
local function remember_refusal(code, fingerprint, until_ms)
  local key = ukey(A.s, 'refused:' .. A.gid)
  redis.call('HSET', key, 'code', code, 'fp', fingerprint)
  if until_ms then
    redis.call('HSET', key, 'until', until_ms)
  end
  redis.call('PEXPIRE', key, A.memo_ms)
end

-- The hold (or, when the promotion account pays, a free slot), S's send slot, the send half.
local function apply_reserve(g)
  if g.payer == nil then
    hold_units(A.s, A.stag, A.kind, g.cost, g, 'send')
  else
    redis.call('INCR', ukey(A.s, 'free'))
  end
  if A.quote then
    redis.call('DEL', ukey(A.s, 'quote:' .. A.quote))
  end
  take_slot(ukey(A.s, 'q:send:' .. A.day))
  store(send_key(), g, SEND_FIELDS)
  gift_event(A.stag, 'sent', g)
end

-- ================================================================ send: the payer's side
-- sponsor: the promotion account holds a newcomer's gift when it can cover it. The hold is
-- due back at the end of the window (plus saga_ms): settle removes it first, unless the gift
-- never got its send half, and then recovery releases it. Returns {existing} or {covers}.
local function check_sponsor(cost)
  local state = redis.call('HGET', sponsor_key(A.promo, A.s), 'state')
  if state then
    return {existing = state}
  end
  local exists = redis.call('EXISTS', ukey(A.promo, 'user')) == 1
  -- counters that do not read cannot be moved: then it does not cover, and the sender pays
  local intact = not corrupt({{ukey(A.promo, 'bal'), A.kind}, {ukey(A.promo, 'held'), A.kind},
                              {tkey(A.ptag, 'tot'), 'holds:' .. A.kind}})
  return {covers = exists and intact and num(redis.call('HGET', ukey(A.promo, 'bal'), A.kind)) >= cost}
end

local function apply_sponsor(cost, due)
  local p = A.promo
  hold_units(p, A.ptag, A.kind, cost, {gift_id = A.gid, sender = A.s}, 'sponsor')
  redis.call('HSET', sponsor_key(p, A.s), 'state', 'held', 'kind', A.kind, 'cost', cost, 'amount', A.base,
             'stag', A.stag, 'ptag', A.ptag, 'recipient', A.r, 'qty', A.qty)
  if due then
    redis.call('ZADD', tkey(A.ptag, 'due'), NOW + A.window + A.saga_ms, 'sponsor|' .. p .. '|' .. A.s .. '|' .. A.gid)
  end
end

-- A send the sender's side refused (or that was abandoned): the admitted offer half is void,
-- R's slots go back, and it is kept for memo_ms, like the sender's refusal memory.
local function apply_void(o, why)
  o.state = move(o.state, 'void')
  local recv, pair = recv_counters(o.day, o.recipient, o.sender)
  give_slot(recv)
  give_slot(pair)
  local key = offer_key(o.recipient)
  redis.call('HSET', key, 'state', o.state, 'why', why)
  redis.call('PEXPIRE', key, A.memo_ms)
  redis.call('ZREM', tkey(o.rtag, 'due'), 'admit|' .. o.recipient .. '|' .. A.gid)
end

-- ================================================================ offer
-- The admitted offer half becomes `pending` with what the send half decided: in the inbox,
-- in the slot's expiry queue, and an offer event to R's devices.
local function apply_offer(o, g, nodes)
  o.state = move(o.state, 'offer')
  for _, f in ipairs({'cost', 'amount', 'created_at_ms', 'expires_at_ms', 'payer', 'festival', 'room', 'ptag'}) do
    o[f] = g[f]
  end
  o.gift_id = A.gid
  store(offer_key(), o, OFFER_FIELDS)
  redis.call('ZADD', ukey(A.r, 'inbox'), o.expires_at_ms, A.gid)
  redis.call('ZADD', tkey(A.rtag, 'expiry'), o.expires_at_ms, A.r .. '|' .. A.gid)
  redis.call('ZREM', tkey(A.rtag, 'due'), 'admit|' .. A.r .. '|' .. A.gid)
  emit(A.r, A.rtag, 'offer', o, nodes)
  return o
end

-- ================================================================ resolve: the decision
-- decide (the offer half decides): A.by answers with A.event 'accept' | 'decline', or the
-- sweeper expires (A.event 'expire'). Returns {err, gift?} or {g, to, changed}.
local FINAL_OF = {accept = 'accepted', decline = 'declined', expire = 'expired'}
local function check_decide()
  local flat = redis.call('HGETALL', offer_key())
  if #flat == 0 then
    -- The sender asking about their own gift is told they are not its recipient.
    if A.by and redis.call('EXISTS', ukey(A.by, 'gift:' .. A.gid)) == 1 then
      return {err = 'NOT_RECIPIENT'}
    end
    return {err = 'GIFT_NOT_FOUND'}
  end
  local g = record(A.gid, flat)
  if g.state == 'admitted' or g.state == 'void' or not well_formed(g) then
    return {err = 'GIFT_NOT_FOUND'}  -- nothing can act on a record that does not read
  end
  if g.state == 'pending' then
    local event = A.event
    if NOW >= g.expires_at_ms then
      event = 'expire'
    elseif event == 'expire' then
      return {err = 'NOT_DUE', gift = g}
    end
    local to = move(g.state, event)
    if to == nil then
      return {err = 'ALREADY_RESOLVED', g = g}  -- the state table has no such move
    end
    if to ~= 'accepted' and corrupt(slot_counters(g)) then
      return {err = 'CORRUPT'}
    end
    return {g = g, to = to, changed = true, expired = event == 'expire' and A.event ~= 'expire'}
  end
  if g.state == FINAL_OF[A.event] then
    return {g = g, changed = false}
  end
  if g.state == 'expired' then
    return {err = 'GIFT_EXPIRED', g = g}
  end
  return {err = 'ALREADY_RESOLVED', g = g}
end

local function apply_decide(g, to, due)
  g.state, g.resolved_at_ms, g.closed, g.rapp = to, NOW, 0, A.rapp
  redis.call('HSET', offer_key(g.recipient), 'state', to, 'resolved_at_ms', NOW, 'closed', 0, 'rapp', A.rapp)
  redis.call('ZREM', ukey(g.recipient, 'inbox'), A.gid)
  redis.call('ZREM', tkey(g.rtag, 'expiry'), g.recipient .. '|' .. A.gid)
  gift_event(g.rtag, to, g)
  if to ~= 'accepted' then
    local recv, pair = recv_counters(g.day, g.recipient, g.sender)
    give_slot(recv)
    give_slot(pair)
  end
  if due then
    redis.call('ZADD', tkey(g.rtag, 'due'), NOW + A.saga_ms, 'settle|' .. g.recipient .. '|' .. A.gid)
  end
end

-- Points of an accepted gift (gift-rules.md section 2): each side earns qty * per_card, the
-- sender's app adds its bonus, the recipient's app multiplies; bonuses round down. The
-- numbers were validated by the caller (clearing/scene_config.py bounds them below 2^53).
local function perks_of(app)
  local p = A.perks.apps[app]
  if p then
    return p[1], p[2], p[3] == 1
  end
  return 0, 1000, false
end

-- ================================================================ resolve: settling the money
-- settle at the payer: the hold goes to the decision. Accepted: cost - amount is consumed
-- and amount is in transit to R until close credits it; otherwise all of it goes back.
-- `g` names the gift in the ledger ({gift_id, sender}).
local function settle_hold(payer, tag, kind, cost, amount, to, g)
  if to == 'accepted' then
    settle_units(payer, tag, kind, cost - amount, amount, g)
  else
    release_units(payer, tag, kind, cost, g, to == 'expired' and 'expire' or 'release', to)
  end
end

-- The send half follows the decision. Returns {s = send half, to} to apply, {done} when
-- it already has, or {err} when it holds another final state (it cannot: only the offer half
-- decides, and every step applies what it decided).
local function check_settle(to)
  local s = record(A.gid, redis.call('HGETALL', send_key()))
  if s.state == to then
    return {done = true, s = s}
  end
  if s.state ~= 'pending' or not well_formed(s) then
    return {err = 'SAGA_CONFLICT'}
  end
  local counters = money_counters(s.sender, s.stag, s.kind, to == 'accepted')
  counters[#counters + 1] = {ukey(s.sender, 'q:send:' .. s.day)}
  counters[#counters + 1] = {ukey(s.sender, 'free')}
  if corrupt(counters) then
    return {err = 'CORRUPT'}
  end
  return {s = s, to = to}
end

local function apply_settle(s, to)
  if s.payer == nil then
    settle_hold(s.sender, s.stag, s.kind, s.cost, s.amount, to, s)
  end
  if to == 'accepted' then
    local bonus, _, joint = perks_of(s.app or 'main')
    local _, _, recipient_joint = perks_of(A.rapp or 'main')
    local base = s.qty * A.perks.per_card
    add_points(s.sender, s.stag, base + math.floor(base * bonus / 1000), s, 'sent', s.app or 'main')
    if joint or recipient_joint then
      redis.call('HSET', ukey(s.sender, 'user'), 'joint', '1')
    end
  else
    give_slot(ukey(s.sender, 'q:send:' .. s.day))
    if s.payer ~= nil then
      give_slot(ukey(s.sender, 'free'))
    end
  end
  s.state, s.resolved_at_ms = to, NOW
  redis.call('HSET', send_key(), 'state', to, 'resolved_at_ms', NOW)
  redis.call('PEXPIRE', send_key(), A.retention)
  emit(s.sender, s.stag, 'outcome', s)
end

-- settle at a sponsoring promotion account: its hold follows the decision (once).
local function check_settle_sponsor(payer, sender)
  local flat = redis.call('HGETALL', sponsor_key(payer, sender))
  local sp = record(A.gid, flat)
  local held = sp.state == 'held'
  if held and (not sp.cost or not sp.amount or corrupt(money_counters(payer, sp.ptag or A.ptag, sp.kind))) then
    return {err = 'CORRUPT', sp = sp}
  end
  return {sp = sp, held = held}
end

local function apply_settle_sponsor(payer, sender, sp, to)
  local tag = sp.ptag or A.ptag
  settle_hold(payer, tag, sp.kind, sp.cost, sp.amount, to, {gift_id = A.gid, sender = sender})
  redis.call('HSET', sponsor_key(payer, sender), 'state', to)
  redis.call('PEXPIRE', sponsor_key(payer, sender), A.retention)
  redis.call('ZREM', tkey(tag, 'due'), 'sponsor|' .. payer .. '|' .. sender .. '|' .. A.gid)
end

-- ================================================================ resolve: closing
-- What close will change, read first: nil, or CORRUPT.
local function check_close(o)
  local counters = {}
  if o.state == 'accepted' then
    counters = money_counters(o.recipient, o.rtag, o.kind, true)
    if o.room then
      counters[#counters + 1] = {ukey(o.room, 'room'), 'wish_progress'}
      counters[#counters + 1] = {ukey(o.room, 'room'), 'version'}
    end
  end
  return corrupt(counters) and 'CORRUPT' or nil
end

-- close at R: an accepted gift's amount leaves transit for R's balance, with R's points and
-- the room's credit; either way R is told and the step is no longer due.
local function apply_close(o)
  if o.state == 'accepted' then
    credit_units(o.recipient, o.rtag, o.kind, o.amount, o, 'credit', 'accepted')
    local _, mult, joint = perks_of(o.rapp or 'main')
    local _, _, sender_joint = perks_of(o.app or 'main')
    local base = o.qty * A.perks.per_card
    add_points(o.recipient, o.rtag, math.floor(base * mult / 1000), o, 'received', o.rapp or 'main')
    if joint or sender_joint then
      redis.call('HSET', ukey(o.recipient, 'user'), 'joint', '1')
    end
    if o.room then
      -- A gift priced in a live room: the sender's contribution on the streamer's board,
      -- and the wish's progress when it wishes for this kind.
      local room = ukey(o.room, 'room')
      redis.call('ZINCRBY', ukey(o.room, 'board'), o.cost, o.sender)
      local r = redis.call('HMGET', room, 'streamer', 'wish_kind')
      if r[1] == o.recipient and r[2] == o.kind then
        redis.call('HINCRBY', room, 'wish_progress', o.qty)
      end
      redis.call('HINCRBY', room, 'version', 1)
    end
  end
  o.closed = 1
  local key = offer_key(o.recipient)
  redis.call('HSET', key, 'closed', 1)
  redis.call('PEXPIRE', key, A.retention)
  redis.call('ZREM', tkey(o.rtag, 'due'), 'settle|' .. o.recipient .. '|' .. A.gid)
  emit(o.recipient, o.rtag, 'outcome', o)
end

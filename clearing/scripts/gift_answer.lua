-- gift_answer.lua: the answer steps of a gift (decide, settle, settle_sponsor, lucky, close),
-- prepended after gift.lua to the scripts that answer, expire or release (clearing/lua.py).
--
-- Across shards an answer is two steps in the common case: answer@R (answer.lua: decide,
-- and at once R's side of close: R credited, told, R's slots back) then settle@S; R's
-- credit of an accepted gift is owed by R's slot (its transit total goes negative by the
-- amount, exactly what close does) until settle@S puts the same amount in transit at S's
-- slot, so the sum over slots is right at every instant. The offer half says how far it got
-- in `closed`: 0 decided only (the three-step path: settle, lucky, close still to run), 1
-- R's side done. `owed` 1 beside `closed` 1: S's settle is still due as `answered|R|id`.
-- Not a `closed` value of its own: the previous release's scripts (still called by old
-- nodes during a rolling update) take any `closed` but 1 as "close still to run" and would
-- credit R again; they read `closed` 1 as done and leave the gift to the sweeper's entry.

-- ================================================================ resolve: the decision
-- decide (the offer half decides): A.by answers with A.event 'accept' | 'decline', or the
-- recipient's guardian rejects a gift awaiting them ('reject'), or the sweeper expires
-- (A.event 'expire'). Returns {err, gift?} or {g, to, changed}.
local FINAL_OF = {accept = 'accepted', decline = 'declined', expire = 'expired'}

-- The lucky card (docs/regions.md "Published odds"): a gift accepted by a user of a region
-- with published odds gets the bonus the node drew for it (clearing/odds.py). A.lucky maps
-- each such region to {table, version, seed, bonus units}; A.lpromo and A.lptag name the
-- promotion account that pays it. The draw is recorded on the offer half with the decision,
-- so every later step (and a retry) pays what was drawn then, whatever the settings are now.
local function lucky_draw(g)
  if type(A.lucky) ~= 'table' or type(A.lpromo) ~= 'string' or A.lpromo == g.recipient then
    return nil
  end
  local region = redis.call('HGET', ukey(g.recipient, 'user'), 'region') or 'global'
  local d = A.lucky[region]
  if type(d) ~= 'table' or type(d[1]) ~= 'string' or type(d[2]) ~= 'number' or type(d[3]) ~= 'string'
      or type(d[4]) ~= 'number' or d[4] < 0 or d[4] % 1 ~= 0 then
    return nil
  end
  return {lucky_table = d[1], lucky_version = d[2], lucky_seed = d[3], lucky_bonus = d[4],
          lucky_payer = A.lpromo, lucky_ptag = A.lptag}
end
local LUCKY_FIELDS = {'lucky_table', 'lucky_version', 'lucky_seed', 'lucky_bonus', 'lucky_payer', 'lucky_ptag'}

local function check_decide()
  local flat = redis.call('HGETALL', offer_key())
  if #flat == 0 then
    -- The sender asking about their own gift is told they are not its recipient (a guardian's
    -- keys are in another slot: not looked at).
    if A.by and A.event ~= 'reject' and redis.call('EXISTS', ukey(A.by, 'gift:' .. A.gid)) == 1 then
      return {err = 'NOT_RECIPIENT'}
    end
    return {err = 'GIFT_NOT_FOUND'}
  end
  local g = record(A.gid, flat)
  if g.state == 'admitted' or g.state == 'void' or not well_formed(g) then
    return {err = 'GIFT_NOT_FOUND'}  -- nothing can act on a record that does not read
  end
  if A.event == 'reject' then
    -- Only the guardian the gift waits for; the same answer again changes nothing.
    if not g.guardian or g.guardian == '' then
      return {err = 'GIFT_NOT_FOUND'}
    elseif g.guardian ~= A.by then
      return {err = 'NOT_GUARDIAN'}
    elseif g.gdone == 'rejected' then
      return {g = g, changed = false}
    elseif g.gdone == 'approved' then
      -- As `gift`, not `g`: the gift is the recipient's now, and this call must not go on
      -- to settle or close it whatever its state.
      return {err = 'ALREADY_RESOLVED', gift = g}
    end
  elseif g.state == 'awaiting_guardian' and A.event ~= 'expire' then
    return {err = 'GIFT_NOT_FOUND'}  -- not offered to the recipient yet
  end
  if g.state == 'pending' or g.state == 'awaiting_guardian' then
    local event = A.event
    if NOW >= g.expires_at_ms then
      event = 'expire'
    elseif event == 'expire' then
      return {err = 'NOT_DUE', gift = g}
    end
    -- Accepting is the recipient's own act: it needs their consent where their region asks
    -- for it (a sender's later withdrawal does not undo a gift already sent, GDPR Art. 7(3)).
    -- Declining and expiry stay open to everyone, so every hold can go back.
    if event == 'accept' and lacks_consent(g.recipient) then
      return {err = 'CONSENT_REQUIRED'}
    end
    local to = move(g.state, event)
    if to == nil then
      return {err = 'ALREADY_RESOLVED', g = g}  -- the state table has no such move
    end
    if to ~= 'accepted' and corrupt(slot_counters(g)) then
      return {err = 'CORRUPT'}
    end
    local lucky = to == 'accepted' and lucky_draw(g) or nil
    return {g = g, to = to, changed = true, expired = event == 'expire' and A.event ~= 'expire', lucky = lucky}
  end
  if g.state == FINAL_OF[A.event] then
    return {g = g, changed = false}
  end
  if g.state == 'expired' then
    return {err = 'GIFT_EXPIRED', g = g}
  end
  return {err = 'ALREADY_RESOLVED', g = g}
end

-- `due`: the saga's entry in R's due queue ('settle' for the three-step path, 'answered'
-- when R's side is done in this same step: see apply_answered), or nil on the fast path.
local function apply_decide(g, to, due, lucky)
  -- What the writes below reach beyond the offer half (read by check_decide): touched
  -- first, so a key not on this node (its slot half-way to another shard) stops the call
  -- before the first write. The receive counters only when they are given back.
  local r = g.recipient
  touch(ukey(r, 'inbox'), tkey(g.rtag, 'expiry'), ukey(r, 'evmeta'), ukey(r, 'ev'))
  if due or g.guardian then
    touch(tkey(g.rtag, 'due'))
  end
  if to ~= 'accepted' then
    touch(recv_counters(g.day, r, g.sender))
  end
  g.state, g.resolved_at_ms, g.rapp = to, NOW, A.rapp
  if due == 'answered' then
    g.closed, g.owed = 1, 1
    -- '1' and '0' as text: a Lua number costs redis.call a %.17g conversion each
    redis.call('HSET', offer_key(g.recipient), 'state', to, 'resolved_at_ms', NOW, 'closed', '1', 'owed', '1',
               'rapp', A.rapp)
  else
    g.closed = 0
    redis.call('HSET', offer_key(g.recipient), 'state', to, 'resolved_at_ms', NOW, 'closed', '0', 'rapp', A.rapp)
  end
  if A.event == 'reject' and to == 'declined' then
    g.gdone = 'rejected'
    redis.call('HSET', offer_key(g.recipient), 'gdone', 'rejected')
  end
  if g.guardian then  -- decided before the ask step was done: it no longer needs to be
    redis.call('ZREM', tkey(g.rtag, 'due'), 'ask|' .. g.recipient .. '|' .. A.gid)
  end
  if lucky then
    for k, v in pairs(lucky) do
      g[k] = v
    end
    store(offer_key(g.recipient), g, LUCKY_FIELDS)
  end
  redis.call('ZREM', ukey(g.recipient, 'inbox'), A.gid)
  redis.call('ZREM', tkey(g.rtag, 'expiry'), g.recipient .. '|' .. A.gid)
  gift_event(g.rtag, to, g)
  if to ~= 'accepted' then
    local recv, pair = recv_counters(g.day, g.recipient, g.sender)
    give_slot(recv)
    give_slot(pair)
  end
  if due then  -- A.due_at: NOW + the saga's step deadline, as text (answer.lua)
    redis.call('ZADD', tkey(g.rtag, 'due'), A.due_at, due .. '|' .. g.recipient .. '|' .. A.gid)
    index_due(g.rtag, A.due_at)
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
-- The sender's count of accepted gifts in the gift's calendar month (its quota day is
-- YYYYMMDD in the rules' time zone): what the eco badges read (clearing/badges.py).
local function given_month(s)
  return 'given:' .. string.sub(tostring(s.day), 1, 6)
end

-- The user's points total for add_points (lib.lua), read with the check of both
-- counters an award may change (add_points: `total`, and `trimmed` when the log is cut);
-- false when either is no whole number.
local function points_total(user)
  local p = redis.call('HMGET', ukey(user, 'points'), 'total', 'trimmed')
  local total = whole(p[1])
  return total ~= nil and whole(p[2]) ~= nil and total
end

local function check_settle(to)
  local s = record(A.gid, redis.call('HGETALL', send_key()))
  if s.state == to then
    return {done = true, s = s}
  end
  if s.state ~= 'pending' or not well_formed(s) then
    return {err = 'SAGA_CONFLICT'}
  end
  -- what apply_settle changes: the hold, and the points (accepted) or the counters given back
  local tot, kind, counters, points, given = tkey(s.stag, 'tot'), s.kind, nil, nil, nil
  if to == 'accepted' then
    points = points_total(s.sender)
    -- the two counts of accepted gifts given, read to be written as one HSET (apply_settle)
    given = redis.call('HMGET', ukey(s.sender, 'stats'), 'given', given_month(s))
    given[1], given[2] = whole(given[1]), whole(given[2])
    if not points or given[1] == nil or given[2] == nil then
      return {err = 'CORRUPT'}
    end
    counters = {{ukey(s.sender, 'held'), kind}, {tot, 'holds:' .. kind, 'consumed:' .. kind, 'transit:' .. kind}}
  else
    counters = {{ukey(s.sender, 'held'), kind}, {tot, 'holds:' .. kind}, {ukey(s.sender, 'bal'), kind},
                {ukey(s.sender, 'q:send:' .. s.day)}, {ukey(s.sender, 'free')}}
  end
  if corrupt(counters) then
    return {err = 'CORRUPT'}
  end
  return {s = s, to = to, points = points, given = given}
end

-- `points`, `given`: what check_settle read of the sender's points total (nil: read again)
-- and counts of gifts given (needed for an accepted gift).
local function apply_settle(s, to, points, given)
  if s.payer == nil then
    settle_hold(s.sender, s.stag, s.kind, s.cost, s.amount, to, s)
  end
  if to == 'accepted' then
    local bonus, _, joint = perks_of(s.app or 'main')
    local _, _, recipient_joint = perks_of(A.rapp or 'main')
    local base = s.qty * A.perks.per_card
    add_points(s.sender, s.stag, base + math.floor(base * bonus / 1000), s, 'sent', s.app or 'main', points)
    -- what the eco badges count (clearing/badges.py): accepted gifts given, in all and per
    -- month, one more each; one HSET of the counts read before, not two HINCRBYs
    redis.call('HSET', ukey(s.sender, 'stats'), 'given', given[1] + 1, given_month(s), given[2] + 1)
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

-- The lucky bonus at its payer, once (the fast path's resolve, or lucky.lua across shards):
-- {paid = units (already paid, or to pay now), fresh = true when this call pays}, or
-- {err = 'CORRUPT'}. A payer short of the bonus pays nothing and the gift records
-- lucky_paid = 0: the draw stands, unfunded (docs/regions.md).
local function lucky_marker(payer, recipient)
  return ukey(payer, 'lucky:' .. recipient .. '|' .. A.gid)
end

local function check_lucky(payer, ptag, recipient, kind, bonus)
  if bonus <= 0 then
    return {paid = 0}
  end
  local done = redis.call('GET', lucky_marker(payer, recipient))
  if done then
    return {paid = num(done)}
  end
  if corrupt({{ukey(payer, 'bal'), kind}, {tkey(ptag, 'tot'), 'transit:' .. kind}}) then
    return {err = 'CORRUPT'}
  end
  local funded = num(redis.call('HGET', ukey(payer, 'bal'), kind)) >= bonus
  return {paid = funded and bonus or 0, fresh = true}
end

-- available -> transit at the payer; close credits it to the recipient.
local function apply_lucky(payer, ptag, recipient, kind, g, c)
  if c.fresh then
    if c.paid > 0 then
      pay_units(payer, ptag, kind, c.paid, g, 'lucky_pay', 'lucky')
    end
    redis.call('SET', lucky_marker(payer, recipient), c.paid, 'PX', A.retention)
  end
end

-- ================================================================ resolve: closing
-- What close will change, read first: nil, or CORRUPT; and for an accepted gift the
-- recipient's points total (points_total), for credit_recipient.
local function check_close(o)
  local counters, points = {}, nil
  if o.state == 'accepted' and o.lucky_bonus and o.lucky_paid == nil then
    -- the caller must say what the payer paid (lucky.lua): a whole number, at most the bonus
    -- drawn, or crediting it would fail half-way or credit more than was put in transit
    local paid = whole(A.lucky_paid)
    if paid == nil or paid > o.lucky_bonus then
      return 'SAGA_CONFLICT'
    end
  end
  if o.state == 'accepted' then
    -- what apply_close changes: the balance, transit, the points
    points = points_total(o.recipient)
    if not points then
      return 'CORRUPT'
    end
    counters = {{ukey(o.recipient, 'bal'), o.kind}, {tkey(o.rtag, 'tot'), 'transit:' .. o.kind},
                {ukey(o.recipient, 'stats'), 'accepted'}}
    if o.room then
      counters[#counters + 1] = {ukey(o.room, 'room'), 'wish_progress', 'version'}
    end
  end
  if corrupt(counters) then
    return 'CORRUPT'
  end
  return nil, points
end

-- R's side of an answer: an accepted gift's amount leaves transit (R's slot) for R's
-- balance, with R's points, the room's credit and the lucky bonus paid; either way R is told.
-- Run by close (after settle@S put the amount in transit at S's slot) or by answer.lua
-- (before it: R's slot owes the amount until settle@S). `points`: R's points total as
-- check_close read it (nil: read again).
local function credit_recipient(o, points)
  if o.state == 'accepted' then
    credit_units(o.recipient, o.rtag, o.kind, o.amount, o, 'credit', 'accepted')
    local _, mult, joint = perks_of(o.rapp or 'main')
    local _, _, sender_joint = perks_of(o.app or 'main')
    local base = o.qty * A.perks.per_card
    add_points(o.recipient, o.rtag, math.floor(base * mult / 1000), o, 'received', o.rapp or 'main', points)
    redis.call('HINCRBY', ukey(o.recipient, 'stats'), 'accepted', '1')  -- for the eco badges
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
  if o.state == 'accepted' and o.lucky_bonus and o.lucky_paid == nil then
    if A.lucky_paid > 0 then
      credit_units(o.recipient, o.rtag, o.kind, A.lucky_paid, o, 'lucky_credit', 'lucky')
    end
    o.lucky_paid = A.lucky_paid
    redis.call('HSET', offer_key(o.recipient), 'lucky_paid', A.lucky_paid)
  end
end

local function tell_recipient(o)
  -- A gift the guardian did not approve was never offered: the recipient hears nothing of it.
  if not (o.guardian and o.guardian ~= '' and o.gdone ~= 'approved') then
    emit(o.recipient, o.rtag, 'outcome', o)
  end
end

-- close at R (the three-step path): R's side, and nothing is due any more.
local function apply_close(o, points)
  credit_recipient(o, points)
  o.closed = 1
  local key = offer_key(o.recipient)
  redis.call('HSET', key, 'closed', '1')
  redis.call('PEXPIRE', key, A.retention)
  redis.call('ZREM', tkey(o.rtag, 'due'), 'settle|' .. o.recipient .. '|' .. A.gid)
  tell_recipient(o)
end

-- Whether answer@R may do R's side at once (apply_answered): not for an accepted gift with
-- a lucky bonus to pay, whose payer (the promotion account, on its own slot) may be short of
-- it, so what R gets is known only after lucky.lua: that gift keeps the three-step path.
local function answers_at_once(to, lucky)
  return not (to == 'accepted' and lucky and lucky.lucky_bonus > 0)
end

-- answer@R after apply_decide(g, to, 'answered', ...): R's side now, before settle@S; the
-- offer half is final here (closed 1, owed 1) and `answered|R|id` stays due until the node (or
-- recovery) has seen settle@S done. The offer half gets no expiry yet: recovery reads it to
-- settle S's hold, however long settle@S takes (a shard down, a settle refused until an
-- operator repairs it); its retention starts when the entry goes (ResolveSaga.answered,
-- apply_finished), as close starts it on the three-step path.
local function apply_answered(o, points)
  credit_recipient(o, points)
  tell_recipient(o)
end

-- After settle@S (the fast path's resolve.lua, which reaches both halves): nothing is due,
-- and the offer half is kept for the retention from now.
local function apply_finished(o)
  o.closed, o.owed = 1, nil
  touch(tkey(o.rtag, 'due'))  -- (the offer half was read before)
  redis.call('HDEL', offer_key(o.recipient), 'owed')
  redis.call('PEXPIRE', offer_key(o.recipient), A.retention)
  redis.call('ZREM', tkey(o.rtag, 'due'), 'answered|' .. o.recipient .. '|' .. A.gid)
end

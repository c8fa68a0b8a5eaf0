-- gift_send.lua: the send steps of a gift (admit, reserve, sponsor, void, offer), prepended
-- after gift.lua to the scripts that send (clearing/lua.py); see gift.lua for the arguments.

-- A campaign's gift (A.camp set; docs/business.md) is issued by a brand to recipients its
-- campaign chose, not sent between friends: the friendship rules (follows, daily counters,
-- real-name verification of the sender, the risk tier's daily limit) do not apply, and an
-- offline recipient is offered it too (from the stream and the welcome's pending list) with
-- the campaign's window. Its `day` is the word `campaign`, so it takes and gives back no
-- daily slot. Bans, freezes, blocks, consent and the brand's balance still refuse it; the
-- guardian rule does not apply (docs/regions.md): a campaign's card waits for nobody.

-- ================================================================ send: the recipient's side
-- The recipient's side of the guardian rule (docs/regions.md): nil when R's region does not
-- ask for a guardian for this gift whoever sends it, else {need = 'any' | 'male' (the sender
-- must be male), g = R's guardian ('' when none is linked), win = the guardian's window}.
local function guard_of_recipient()
  if not A.guard then
    return nil
  end
  local u = account(A.r, AC_GUARDIAN)
  local rule = A.guard[u[AC_REGION] or 'global']
  if type(rule) ~= 'table' then
    return nil
  end
  if rule[1] == 'any' or (rule[1] == 'male_to_female' and u[AC_GENDER] == 'female') then
    return {need = rule[1] == 'any' and 'any' or 'male', g = u[AC_GUARDIAN] or '', win = rule[2]}
  end
  return nil
end

-- The verdict an admitted offer half keeps (a retry of the send decides the same way).
local function guard_of_offer(o)
  if o.gneed then
    return {need = o.gneed, g = o.gcand or '', win = o.gwin}
  end
  return nil
end

-- admit: R's rules (R exists, not banned, has consented where its region asks, has not blocked S, follows S for long enough, has a
-- receive slot left, is online). Returns {err} (nothing to write), {existing = offer half}
-- (a retry), or {nodes, guard} (admit; guard: guard_of_recipient).
local function check_admit()
  local flat = call('HGETALL', offer_key())
  if #flat > 0 then
    local o = record(A.gid, flat)
    if not same_gift(o) then
      return {err = 'IDEMPOTENCY_CONFLICT'}
    end
    if o.state == 'void' then
      return {err = o.why or 'SEND_ABORTED'}
    end
    return {existing = o, guard = guard_of_offer(o)}
  end
  local r = account(A.r, AC_BANNED)
  if not r[AC_CREATED] then
    return {err = 'UNKNOWN_USER'}
  end
  local rfrozen, _, _, rbanned = risk_of(A.r, nil)
  if r[AC_BANNED] == '1' or rbanned then
    return {err = 'RECIPIENT_BANNED'}
  end
  -- The recipient's freeze end is not the sender's business: no time goes with this code.
  if rfrozen then
    return {err = 'RECIPIENT_FROZEN'}
  end
  if lacks_consent(A.r) then
    return {err = 'RECIPIENT_NO_CONSENT'}
  end
  if call('SISMEMBER', ukey(A.r, 'blocks'), A.s) == 1 then
    return {err = 'BLOCKED'}
  end
  if A.camp then
    return {nodes = live_nodes(A.r)}
  end
  local since = call('HGET', ukey(A.r, 'follows'), A.s)
  if not since or num(since) > NOW - A.follow_age then
    return {err = 'NOT_MUTUAL_3D'}
  end
  -- A counter that holds no whole number counts as full: nothing could add to it.
  local counts = call('MGET', recv_counters(A.day, A.r, A.s))
  local recv, pair = whole(counts[1] or nil), whole(counts[2] or nil)
  local used = A.scope == 'pair' and pair or recv
  if recv == nil or pair == nil or used >= A.recv_limit then
    return {err = 'LIMIT_DAILY_RECEIVE'}
  end
  local nodes = live_nodes(A.r)
  if #nodes == 0 then
    return {err = 'RECIPIENT_OFFLINE'}
  end
  return {nodes = nodes, guard = guard_of_recipient()}
end

-- The card art of the recipient's region for this kind (clearing/skins.py): A.skins maps each
-- region that has its own art for A.kind to the skin id; nil: the default art.
local function region_skin(r)
  if type(A.skins) ~= 'table' then
    return nil
  end
  local skin = A.skins[account(r, AC_REGION)[AC_REGION] or 'global']
  return type(skin) == 'string' and skin or nil
end

-- What an admitted half holds, in OFFER_FIELDS' order (store() writes these only).
local ADMITTED_FIELDS = {'sender', 'recipient', 'kind', 'qty', 'state', 'day', 'app', 'stag', 'rtag', 'gneed', 'gcand',
                         'gwin', 'skin', 'camp'}

-- Take R's receive slots and the offer half, `admitted`: written and due for recovery, or,
-- when the offer follows in this same script (due false), left for apply_offer to write.
local function apply_admit(due, guard)
  if not A.camp then
    local recv, pair = recv_counters(A.day, A.r, A.s)
    take_slot(recv)
    take_slot(pair)
  end
  local o = {sender = A.s, recipient = A.r, kind = A.kind, qty = A.qty, state = 'admitted', day = A.day,
             app = A.app, stag = A.stag, rtag = A.rtag, skin = region_skin(A.r),
             camp = A.camp}
  if guard then
    o.gneed, o.gcand, o.gwin = guard.need, guard.g, guard.win
  end
  if due then
    store(offer_key(), o, ADMITTED_FIELDS)
    local at = int(NOW + A.saga_ms)
    call('ZADD', tkey(A.rtag, 'due'), at, 'admit|' .. A.r .. '|' .. A.gid)
    index_due(A.rtag, at)
  else
    o.unwritten = true
  end
  return o
end

-- ================================================================ send: the sender's side
-- reserve: idempotency, then S's rules, merged with R's refusal (rcode) in the documented
-- order. Returns {err, remember}, {existing = send half}, {need_sponsor = true} (the answer
-- depends on whether the promotion account covers the gift: ask it, then call again with
-- A.sponsor = 'yes' | 'no'), or {g = the send half to write, payer}.
local function check_reserve(rcode, rguard)
  local flat = call('HGETALL', send_key())
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
  local memo = call('HMGET', ukey(A.s, 'refused:' .. A.gid), 'code', 'fp', 'until')
  if memo[1] then
    if memo[2] ~= fingerprint then
      return {err = 'IDEMPOTENCY_CONFLICT'}
    end
    return {err = memo[1], until_ms = memo[1] == 'ACCOUNT_FROZEN' and whole(memo[3] or nil) or nil}
  end
  if A.pre or rcode == 'IDEMPOTENCY_CONFLICT' then
    return {err = A.pre or rcode}  -- needs no state: not remembered
  end

  local s = account(A.s, AC_GENDER)
  local frozen, limited, dev_banned, rbanned = risk_of(A.s, A.dev)
  local code, until_ms
  if not s[AC_CREATED] then
    code = 'UNKNOWN_USER'
  elseif s[AC_BANNED] == '1' or rbanned then
    code = 'SENDER_BANNED'
  elseif dev_banned then
    code = 'DEVICE_BANNED'
  elseif frozen then
    code, until_ms = 'ACCOUNT_FROZEN', frozen > 0 and frozen or nil
  elseif lacks_consent(A.s) then
    code = 'CONSENT_REQUIRED'
  elseif s[AC_VERIFIED] ~= '1' and not A.camp then
    code = 'NOT_VERIFIED'
  elseif call('SISMEMBER', ukey(A.s, 'blocks'), A.r) == 1 then
    code = 'BLOCKED'
  end
  if code == nil and not A.camp then
    local since = call('HGET', ukey(A.s, 'follows'), A.r)
    local limit = A.send_limit + (s[AC_VIP] == '1' and A.vip_bonus or 0)
    if not since or num(since) > NOW - A.follow_age then
      code = 'NOT_MUTUAL_3D'
    else
      local sent = whole(call('GET', ukey(A.s, 'q:send:' .. A.day)) or nil)
      if sent == nil or sent >= limit then
        code = 'LIMIT_DAILY_SEND'  -- a counter that holds no whole number counts as full
      elseif limited and (sent >= A.rl_daily or (A.quote and A.rl_rooms ~= 1)) then
        code = 'RISK_LIMITED'  -- the low tier's behaviour limits, instead of a refusal of all
      end
    end
  end
  -- The guardian rule, with R's verdict: a gift it applies to waits for R's guardian, unless
  -- the guardian sends it; without a guardian linked it is refused.
  local guardian
  if rguard and (rguard.need == 'any' or s[AC_GENDER] == 'male') and rguard.g ~= A.s then
    if rguard.g == '' then
      code = first_refusal(code, 'GUARDIAN_REQUIRED')
    else
      guardian = rguard.g
    end
  end
  code = first_refusal(code, rcode)
  if code and rank(code) < rank('QUOTE_EXPIRED') then
    return {err = code, remember = fingerprint, until_ms = code == 'ACCOUNT_FROZEN' and until_ms or nil}
  end

  local cost, room = A.cost, nil
  if A.quote then
    local q = call('HMGET', ukey(A.s, 'quote:' .. A.quote), 'recipient', 'kind', 'qty', 'cost',
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
  -- An account age or free-gift count that does not read makes no newcomer. The count is
  -- read only for a young account: an established sender's gift does not need it.
  local created = whole(s[AC_CREATED])
  if A.promo and A.promo ~= A.s and A.promo ~= A.r and created and NOW - created < A.nc_age
      and (whole(call('GET', ukey(A.s, 'free')) or nil) or A.nc_free) < A.nc_free then
    if A.sponsor == nil then
      return {need_sponsor = true, cost = cost}
    end
    if A.sponsor == 'yes' then
      payer = A.promo
    end
  end
  -- The balance is read once, for the check and for corrupt()'s: hold_units changes it.
  local balance = payer == A.s and call('HGET', ukey(A.s, 'bal'), A.kind)
  if payer == A.s and num(balance) < cost then
    code = first_refusal('INSUFFICIENT_BALANCE', code)
  end
  if code then
    return {err = code, remember = fingerprint}
  end
  if payer == A.s and (whole(balance or nil) == nil
                       or corrupt({{ukey(A.s, 'held'), A.kind}, {tkey(A.stag, 'tot'), 'holds:' .. A.kind}})) then
    return {err = 'CORRUPT'}
  end
  local g = {gift_id = A.gid, sender = A.s, recipient = A.r, kind = A.kind, qty = A.qty, cost = cost,
             amount = A.base, state = 'pending', created_at_ms = NOW, expires_at_ms = NOW + A.window,
             day = A.day, app = A.app, payer = payer ~= A.s and payer or nil, festival = A.festival,
             room = room, stag = A.stag, rtag = A.rtag, ptag = payer ~= A.s and A.ptag or nil,
             camp = A.camp}
  if guardian then
    -- Held for the guardian's window, then the recipient's: the latest it can be answered.
    g.guardian, g.gwin = guardian, rguard.win
    g.expires_at_ms = NOW + rguard.win + A.window
  end
  return {g = g}
end

-- Remember a refusal for the gift id (see check_reserve).
local function remember_refusal(code, fingerprint, until_ms)
  local key = ukey(A.s, 'refused:' .. A.gid)
  call('HSET', key, 'code', code, 'fp', fingerprint)
  if until_ms then
    call('HSET', key, 'until', until_ms)
  end
  call('PEXPIRE', key, A.memo_ms)
end

-- The hold (or, when the promotion account pays, a free slot), S's send slot, the send half.
local function apply_reserve(g)
  if g.payer == nil then
    hold_units(A.s, A.stag, A.kind, g.cost, g, 'send')
  else
    call('INCR', ukey(A.s, 'free'))
  end
  if A.quote then
    call('DEL', ukey(A.s, 'quote:' .. A.quote))
  end
  if not A.camp then
    take_slot(ukey(A.s, 'q:send:' .. A.day))
  end
  store(send_key(), g, SEND_FIELDS)
  gift_event(A.stag, 'sent', g)
end

-- ================================================================ send: the payer's side
-- sponsor: the promotion account holds a newcomer's gift when it can cover it. The hold is
-- due back at the end of the window (plus saga_ms): settle removes it first, unless the gift
-- never got its send half, and then recovery releases it. Returns {existing} or {covers}.
local function check_sponsor(cost)
  local state = call('HGET', sponsor_key(A.promo, A.s), 'state')
  if state then
    return {existing = state}
  end
  local exists = call('EXISTS', ukey(A.promo, 'user')) == 1
  -- counters that do not read cannot be moved: then it does not cover, and the sender pays
  local intact = not corrupt({{ukey(A.promo, 'bal'), A.kind}, {ukey(A.promo, 'held'), A.kind},
                              {tkey(A.ptag, 'tot'), 'holds:' .. A.kind}})
  return {covers = exists and intact and num(call('HGET', ukey(A.promo, 'bal'), A.kind)) >= cost}
end

local function apply_sponsor(cost, due)
  local p = A.promo
  hold_units(p, A.ptag, A.kind, cost, {gift_id = A.gid, sender = A.s}, 'sponsor')
  call('HSET', sponsor_key(p, A.s), 'state', 'held', 'kind', A.kind, 'cost', cost, 'amount', A.base,
             'stag', A.stag, 'ptag', A.ptag, 'recipient', A.r, 'qty', A.qty)
  if due then
    call('ZADD', tkey(A.ptag, 'due'), NOW + A.window + A.saga_ms, 'sponsor|' .. p .. '|' .. A.s .. '|' .. A.gid)
    index_due(A.ptag, NOW + A.window + A.saga_ms)
  end
end

-- A send the sender's side refused (or that was abandoned): the admitted offer half is void,
-- R's slots go back, and it is kept for memo_ms, like the sender's refusal memory.
local function apply_void(o, why)
  o.state = move(o.state, 'void')
  local recv, pair = recv_counters(o.day, o.recipient, o.sender)
  local key = offer_key(o.recipient)
  touch(tkey(o.rtag, 'due'), key, pair)  -- (recv: give_slot's EXISTS comes before any write)
  give_slot(recv)
  give_slot(pair)
  call('HSET', key, 'state', o.state, 'why', why)
  call('PEXPIRE', key, A.memo_ms)
  call('ZREM', tkey(o.rtag, 'due'), 'admit|' .. o.recipient .. '|' .. A.gid)
end

-- ================================================================ offer
-- What apply_offer sets on an admitted half, in OFFER_FIELDS' order (so that the fields it
-- adds to the hash come in the order a whole store would add them).
-- What it takes from the send half.
local FROM_SEND = {'cost', 'amount', 'created_at_ms', 'expires_at_ms', 'payer', 'festival', 'room', 'ptag'}
local OFFERED_FIELDS = {'cost', 'amount', 'state', 'created_at_ms', 'expires_at_ms', 'payer', 'festival', 'room',
                        'ptag', 'guardian', 'rwin'}
-- The admitted offer half becomes `pending` with what the send half decided: in the inbox,
-- in the slot's expiry queue, and an offer event to R's devices. A gift the send half says
-- waits for R's guardian becomes `awaiting_guardian` instead: in the expiry queue at the end
-- of the guardian's window, not in the inbox, nothing told to R; the guardian is asked by the
-- next step (guardian_ask.lua at the guardian's slot), due here as ask|R|id until it is done.
local function apply_offer(o, g, nodes)
  o.state = move(o.state, g.guardian and 'guard' or 'offer')
  for _, f in ipairs_(FROM_SEND) do
    o[f] = g[f]
  end
  if g.guardian then
    o.guardian, o.rwin = g.guardian, A.window
    o.expires_at_ms = g.created_at_ms + g.gwin
  end
  o.gift_id = A.gid
  -- A stored admitted half gets only the fields this step sets: the others are what it read.
  store(offer_key(), o, o.unwritten and OFFER_FIELDS or OFFERED_FIELDS)
  local expires = int(o.expires_at_ms)
  call('ZADD', tkey(A.rtag, 'expiry'), expires, A.r .. '|' .. A.gid)
  index_due(A.rtag, expires)
  if not o.unwritten then  -- admitted by an earlier step: no longer due
    call('ZREM', tkey(A.rtag, 'due'), 'admit|' .. A.r .. '|' .. A.gid)
  end
  o.unwritten = nil
  if g.guardian then
    local at = int(NOW + A.saga_ms)
    call('ZADD', tkey(A.rtag, 'due'), at, 'ask|' .. A.r .. '|' .. A.gid)
    index_due(A.rtag, at)
    return o
  end
  call('ZADD', ukey(A.r, 'inbox'), expires, A.gid)
  emit(A.r, A.rtag, 'offer', o, nodes)
  return o
end

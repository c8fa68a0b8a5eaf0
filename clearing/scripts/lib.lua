-- lib.lua: the start of clearing's Redis Functions library (clearing/lua.py assembles it),
-- after the generated MOVES and RANK (clearing/model.py's state table and clearing/errors.py's
-- refusal order, each one constant string); the step libraries and every script's function
-- follow. All of it is defined once, when the library is loaded; a call runs only begin()
-- below and its script's body.
--
-- Per-call state: what a call reads from its arguments, and what it collects until it ends
-- (the rate token, the ledger records), lives in the locals declared here and is set again
-- by begin() at the start of every call, so nothing of one call (even one that failed
-- half-way) reaches the next.
--
-- Arguments: ARGV[1] is one msgpack map of named arguments, read by begin() into A. Every script
-- gets A.p (key prefix) and A.now (ms since the epoch: the caller's clock, never TIME, so a
-- test can move the clock and a replica replays the same effects); the rest is named in
-- each script's header. KEYS[1] is the key that routes the call (one of the slot's keys).
--
-- Keys: '<prefix>:{<tag>}:<name>' (clearing/keys.py). ukey(user, name) is a key of a user's
-- own slot; tkey(tag, name) a key shared by one slot's users, under the slot's tag, which
-- the caller passes (A.stag, A.rtag...). A script touches the slots of the users it is given
-- and nothing else, so that it runs on a Redis Cluster node that holds those slots.
--
-- Numbers: Lua numbers are doubles. Every amount, count and time stays below 2^53 (the
-- Python side refuses bigger inputs and bounds every setting), so tonumber() is exact and
-- redis.call() formats them as plain integers. Never concatenate a large number with `..`
-- (that uses %.14g).
--
-- Shape of every script: read and check everything, compute every value, then write.
-- A Lua error does not roll back the writes before it, so nothing that can fail (a missing
-- field, a value of the wrong type, an overflow) may come after the first write.

local A, PREFIX, NOW

-- Globals read on every call, as locals: in a function of the library a global read costs
-- ~150 instructions more than a local's (the library's environment resolves globals through a
-- metatable), and while the library loads they cannot be read, so begin() takes them on the
-- first call (they never change).
local call, format, type_of, ipairs_, pairs_, unpack_, tonum, find, match, abs, pack, byte, unpack_map

-- A number as redis.call() would write it, for a command. Given a Lua number, redis.call()
-- formats it with "%.17g" (~3.6k instructions a use); '%d' writes the same digits for a
-- nonzero whole number within 2^53 for about half of that, and a number that goes to several
-- commands is formatted once. Anything else (0, which may be -0; a fraction; a bigger number,
-- from a hand edit) is left to redis.call() as it is.
local function int(n)
  if n % 1 == 0 and n ~= 0 and n <= 9007199254740991 and n >= -9007199254740991 then
    return format('%d', n)
  end
  return n
end

local function ukey(user, name)
  return PREFIX .. ':{' .. user .. '}:' .. name
end
local tkey = ukey

-- A.home: the tag of a slot the Redis node running this call serves (the caller's map says
-- which). Gateway nodes listen on one channel per Redis node, in that slot, so every
-- publish of the call goes there. Touched first (begin()): if the map was stale and the slot
-- is not served here, the call fails now, before any write, and the caller reads the map again.
--
-- The touch is a TYPE of this node's sweep index (index_due below), which also tells
-- whether entries can be noted in it (sweep_indexed()): a key of another type (a hand edit)
-- would make the ZADD fail after other writes, so then nothing is noted and the full sweep
-- finds them. A script that writes ledger records touches the home slot with the TYPE of its
-- ledger stream instead (begin()), which is in the same slot, and asks about the sweep index
-- only when it notes an entry there: most answers note none, and save the command.
local HOME, INDEXED

-- Whether the sweep index can take entries (nil in INDEXED: not asked yet in this call). A
-- TYPE cannot fail on the home slot once begin() has touched it, so asking late is safe.
local function sweep_indexed()
  if INDEXED == nil and HOME then
    local held = call('TYPE', tkey(HOME, 'sweepidx'))['ok']
    INDEXED = held == 'zset' or held == 'none'
  end
  return INDEXED == true
end

-- Every entry added to a slot's expiry or due queue is noted in the sweep index of this
-- Redis node (a sorted set in the home slot: slot tag -> earliest time something there may
-- come due), so that the sweeper reads only the slots with entries instead of all of them.
-- LT keeps the earlier time; due.lua sets the slot's true next time when it reads the slot.
-- A caller without a home (the benchmark's redis-benchmark) leaves it to the full sweep.
local function index_due(tag, at)
  if sweep_indexed() then
    call('ZADD', tkey(HOME, 'sweepidx'), 'LT', at, tag)
  end
end

-- A user's account fields that the gift steps decide on ({U}:user). Without a regional rule
-- in the call's arguments (consent, guardian, card art) a gift step reads each side's
-- account once, and only the fields of the rules without a region (`fields`: the first two
-- for a recipient, five for a sender). With one, several checks read the same account, so
-- the first reads all of these fields with one HMGET and the others reuse it (a read costs
-- by the command far more than by the field). Nothing a call writes to the account hash is
-- among these fields (`joint` is not), so what was read stays what is stored; begin()
-- forgets it. The reply is as HMGET gives it (false for an absent field), by position:
local AC_CREATED, AC_BANNED, AC_VERIFIED, AC_VIP, AC_GENDER, AC_REGION, AC_CONSENT, AC_GUARDIAN = 1, 2, 3, 4, 5, 6, 7, 8
local ACCOUNT_FIELDS = {'created_at_ms', 'banned', 'verified', 'vip', 'gender', 'region', 'consent', 'guardian'}
local ACCOUNTS
local function account(user, fields)
  if not (A.consent or A.guard or A.skins) then
    return call('HMGET', ukey(user, 'user'), unpack_(ACCOUNT_FIELDS, 1, fields))
  end
  ACCOUNTS = ACCOUNTS or {}
  local u = ACCOUNTS[user]
  if u == nil then
    u = call('HMGET', ukey(user, 'user'), unpack_(ACCOUNT_FIELDS))
    ACCOUNTS[user] = u
  end
  return u
end

-- A request's rate token, checked first (check_rate) and taken when the script ends, by
-- its reply or its refusal: a script that stops on an error (a key whose slot moved to
-- another node, on the fast path) has then written nothing at all.
local rate_to_take = nil
-- The ledger records of this call, appended when it ends (see "the ledger" below).
local flush_ledger

local function take_pending_rate()
  if rate_to_take then
    call('SET', rate_to_take[1], rate_to_take[2], 'PX', rate_to_take[3])
    rate_to_take = nil
  end
end

local function reply(t)
  take_pending_rate()
  flush_ledger()
  return pack(t)
end

-- A refusal: nothing was written (except where a script's header says otherwise, and the
-- request's rate token).
local function refuse(code, gift, until_ms)
  take_pending_rate()
  flush_ledger()
  return pack({err = code, gift = gift, until_ms = until_ms})
end

-- A refusal code's place in the documented order (RANK: the codes in order, each between
-- spaces); nil for a code that is not there.
local function rank(code)
  return find(RANK, ' ' .. code .. ' ', 1, true)
end

-- The earlier of two refusal codes in the documented order (either may be nil).
local function first_refusal(a, b)
  if a == nil then
    return b
  end
  if b == nil or rank(a) <= rank(b) then
    return a
  end
  return b
end

-- The state a gift moves to on an event, from the generated table (MOVES:
-- ';state:event=target;...'); nil when the move is not legal. A plain search: a stored
-- state is data, never a pattern.
local function move(state, event)
  local key = ';' .. tostring(state) .. ':' .. event .. '='
  local at = find(MOVES, key, 1, true)
  return at and match(MOVES, '^[^;]+', at + #key) or nil
end

-- A stored number read for a decision: what is no number reads as 0 (a hand edit or an
-- older layout); the invariant reports such data.
local function num(value)
  return tonum(value or '0') or 0
end

-- Below this a counter is exact in Lua and far from HINCRBY's 64-bit limit.
local MAX_COUNTER = 9007199254740991

-- A stored counter's whole value (absent: 0), or nil when it holds anything else. Whole as
-- INCR and HINCRBY read it: '0', or digits without a leading zero after an optional '-'.
-- Lua's tonumber also reads '007' and '-0', which Redis refuses to increment ("not an
-- integer"): passed as whole, they would fail a script at its write, after earlier writes.
local function whole(value)
  if not value then
    return 0
  end
  local n = (match(value, '^-?[1-9]%d*$') or value == '0' or value == 0) and tonum(value)
  if n and abs(n) <= MAX_COUNTER then
    return n
  end
  return nil
end

-- The first of these counters that is no whole number, or nil.
-- Every counter a script will INCR or HINCRBY is read here first, before any write: those
-- commands fail on anything else, and a failure after the first write would leave the
-- script's work half done.
-- Each entry is {key} (a plain counter) or {key, field, ...}: fields of one hash, read with
-- one HMGET (a script's reads cost by the command more than by the field).
local function corrupt(counters)
  for _, c in ipairs_(counters) do
    if c[2] then
      local got = call('HMGET', unpack_(c))
      for i = 1, #got do
        if whole(got[i]) == nil then
          return c[1] .. '[' .. c[i + 1] .. ']'
        end
      end
    elseif whole(call('GET', c[1])) == nil then
      return c[1]
    end
  end
  return nil
end

-- Totals per card kind of one slot: minted, holds, consumed, transit (see clearing/keys.py).
-- Only the movers below call it, so that every change of a total has its ledger entry.
local function add_total(tag, name, kind, delta)
  if delta ~= 0 then
    call('HINCRBY', tkey(tag, 'tot'), name .. ':' .. kind, int(delta))
  end
end

-- ------------------------------------------------------------------ the ledger (outbox)
-- Every change of value appends a double-entry record to the ledger stream of the Redis
-- server that runs the call ({home}:ledger; the slot's own tag for a caller that gives no
-- home), in the same script as the change: no change without its record, no record
-- without its change (docs/ledger.md). Units leave the debit account and reach the credit
-- account; an account's balance is its credits minus its debits. Accounts:
--   avail:<user>  held:<user>  points:<user>    (the user's bal / held hashes, points total)
--   issued:<tag>  consumed:<tag>  transit:<tag>  awards:<tag>   (per slot; issued and awards
--   only ever give, so their balances are minus what was minted or awarded)
-- A call's records go out as ONE stream entry when it ends (reply or refuse): fields op
-- (the call's id, A.op), ms (its clock) and b (msgpack list of records; each has n, its
-- number in the call, so "<op>.<n>" is unique). One XADD per call, not one per record.
-- A.lmax (entries kept per stream, MAXLEN ~) and A.op come with the calls of the scripts
-- that write records (clearing/lua.py LEDGER_SCRIPTS); checked here, before the script's
-- first write (begin()), as is the stream itself (a key of another type would make XADD fail).
-- A.loff = 1 (NOTECARD_LEDGER=off, for measuring the outbox's cost only) writes no records:
-- the scripts change value exactly as with the ledger on, without the entries.
local LEDGER_MAX, LEDGER_OP, LEDGER_OFF
local ledger_seq, ledger_buf, ledger_order
local function ledger_key(tag)
  return tkey(HOME or tag, 'ledger')
end

local function ledger_push(tag, rec)
  if LEDGER_MAX == nil then
    error('a ledger record from a script missing in LEDGER_SCRIPTS (clearing/lua.py)')
  end
  if LEDGER_OFF then
    return
  end
  ledger_seq = ledger_seq + 1
  rec.n = ledger_seq
  local key = ledger_key(tag)
  local list = ledger_buf[key]
  if list == nil then
    list = {}
    ledger_buf[key] = list
    ledger_order[#ledger_order + 1] = key
  end
  list[#list + 1] = rec
end

flush_ledger = function()
  if ledger_order[1] == nil then
    return
  end
  local lmax, ms = int(LEDGER_MAX), int(NOW)
  for _, key in ipairs_(ledger_order) do
    call('XADD', key, 'MAXLEN', '~', lmax, '*', 'op', LEDGER_OP, 'ms', ms,
               'b', pack(ledger_buf[key]))
  end
  ledger_buf, ledger_order = {}, {}
end

-- One record (t = 'e'); `g` is the gift (or nil), `cause` what made the move. Zero units
-- move nothing and write nothing.
local function ledger(tag, ekind, debit, credit, kind, units, g, cause)
  if units ~= 0 then
    ledger_push(tag, {t = 'e', ek = ekind, dr = debit, cr = credit, k = kind, u = units,
                      g = g and g.gift_id or '', s = g and g.sender or '', c = cause})
  end
end

-- A gift's life for the platform's feed (t = 'g'): sent, accepted, declined, expired.
-- `camp`, only on a brand campaign's or a shop order's gift (absent otherwise), is what the
-- book of record's dashboard rows are derived from (ledger/books.py). `rg`, the recipient's
-- region (account field `region`, absent when not set), rides on a campaign gift's answer
-- (accepted, declined, expired) only: those are written on the recipient's slot, where its
-- account is; the `sent` event is written on the sender's, where it may not be.
local function gift_event(tag, event, g)
  local region
  if g.camp and event ~= 'sent' then
    region = call('HGET', ukey(g.recipient, 'user'), 'region') or nil
  end
  ledger_push(tag, {t = 'g', ev = event, g = g.gift_id, s = g.sender, r = g.recipient, k = g.kind, q = g.qty,
                    cost = g.cost, amt = g.amount, payer = g.payer or g.sender, camp = g.camp, rg = region})
end

-- A shop order's purchase for the book of record's dashboards (t = 'o'): no value moves
-- (docs/ledger.md "Order notes"). order_note.lua writes it.
local function order_record(tag, shop, order_id, buyer, spend, state)
  ledger_push(tag, {t = 'o', shop = shop, o = order_id, b = buyer, sp = spend, st = state})
end

-- The movers: each changes a user's hash and/or a slot's totals and appends the entry.
-- `tag` is the user's slot tag. The callers checked every counter first (corrupt()).
local function mint_units(user, tag, kind, units)
  call('HINCRBY', ukey(user, 'bal'), kind, units)
  add_total(tag, 'minted', kind, units)
  ledger(tag, 'mint', 'issued:' .. tag, 'avail:' .. user, kind, units, nil, 'mint')
end

-- available -> held (a gift's cost, held by its payer)
local function hold_units(user, tag, kind, units, g, cause)
  local held = int(units)
  -- (-units by the same digits: one formatting for the two commands)
  call('HINCRBY', ukey(user, 'bal'), kind, units > 0 and held ~= units and '-' .. held or -units)
  call('HINCRBY', ukey(user, 'held'), kind, held)
  add_total(tag, 'holds', kind, units)
  ledger(tag, 'hold', 'avail:' .. user, 'held:' .. user, kind, units, g, cause)
end

-- held -> available (ekind 'release' or 'expire')
local function release_units(user, tag, kind, units, g, ekind, cause)
  call('HINCRBY', ukey(user, 'held'), kind, -units)
  call('HINCRBY', ukey(user, 'bal'), kind, units)
  add_total(tag, 'holds', kind, -units)
  ledger(tag, ekind, 'held:' .. user, 'avail:' .. user, kind, units, g, cause)
end

-- held -> consumed (the share an accepted gift's payer loses) and held -> transit (what
-- the recipient will get)
local function settle_units(user, tag, kind, consumed, transit, g)
  call('HINCRBY', ukey(user, 'held'), kind, -(consumed + transit))
  add_total(tag, 'holds', kind, -(consumed + transit))
  add_total(tag, 'consumed', kind, consumed)
  add_total(tag, 'transit', kind, transit)
  ledger(tag, 'consume', 'held:' .. user, 'consumed:' .. tag, kind, consumed, g, 'accepted')
  ledger(tag, 'settle', 'held:' .. user, 'transit:' .. tag, kind, transit, g, 'accepted')
end

-- available -> consumed (a purchase: an avatar frame)
local function consume_units(user, tag, kind, units, cause)
  call('HINCRBY', ukey(user, 'bal'), kind, -units)
  add_total(tag, 'consumed', kind, units)
  ledger(tag, 'consume', 'avail:' .. user, 'consumed:' .. tag, kind, units, nil, cause)
end

-- available -> transit (a payment that another slot will credit) and back out of transit
local function pay_units(user, tag, kind, units, g, ekind, cause)
  call('HINCRBY', ukey(user, 'bal'), kind, -units)
  add_total(tag, 'transit', kind, units)
  ledger(tag, ekind, 'avail:' .. user, 'transit:' .. tag, kind, units, g, cause)
end
local function credit_units(user, tag, kind, units, g, ekind, cause)
  call('HINCRBY', ukey(user, 'bal'), kind, units)
  add_total(tag, 'transit', kind, -units)
  ledger(tag, ekind, 'transit:' .. tag, 'avail:' .. user, kind, units, g, cause)
end

-- A daily counter: INCR with its expiry, so no counter outlives its use. (One SET of the
-- count the caller read, with PX and GET, costs more than the two.)
local function take_slot(counter)
  call('INCR', counter)
  call('PEXPIRE', counter, A.quota_ttl)
end

-- Touch each key a write below will reach, before the first write (one EXISTS per key: on
-- the target of a moving slot, after ASK, a read of one missing key is served while one of
-- several is refused, and keys of different slots may not share a command). While the slot is
-- moving to another shard, Redis stops a redis.call at a key that is not on this node (moved
-- already, or new: the source answers ASK for any key it lacks) and keeps the writes made
-- before it; a touch stops the call there instead, with nothing written, and the caller
-- retries once the slot has moved (ClearingUnavailable).
local function touch(...)
  for i = 1, select('#', ...) do
    call('EXISTS', (select(i, ...)))
  end
end

local function give_slot(counter)
  if call('EXISTS', counter) == 1 then
    call('DECR', counter)
  end
end

-- ------------------------------------------------------------------ gift records
local GIFT_NUMBERS = {qty = true, cost = true, amount = true, created_at_ms = true,
                      expires_at_ms = true, resolved_at_ms = true, closed = true, owed = true, gwin = true,
                      rwin = true, lucky_version = true, lucky_bonus = true, lucky_paid = true}
-- Fields a client or an operator sees (GiftRecord); the others are the saga's own.
local PUBLIC = {gift_id = true, sender = true, recipient = true, kind = true, qty = true, cost = true,
                amount = true, state = true, created_at_ms = true, expires_at_ms = true,
                resolved_at_ms = true, payer = true, app = true, festival = true, room = true,
                guardian = true, lucky_table = true, lucky_version = true, lucky_seed = true, lucky_bonus = true,
                lucky_paid = true, skin = true, camp = true}

-- HGETALL of a gift half -> a table of its fields (numbers as numbers).
local function record(id, flat)
  local g = {gift_id = id}
  for i = 1, #flat, 2 do
    local f, v = flat[i], flat[i + 1]
    g[f] = GIFT_NUMBERS[f] and tonum(v) or v
  end
  return g
end

local function public(g)
  local out = {}
  for f, v in pairs_(g) do
    if PUBLIC[f] then
      out[f] = v
    end
  end
  return out
end

-- Write a record's fields (nil values are skipped: an absent field reads as nil). A whole
-- number goes as int()'s text: the same digits redis.call() would write.
local function store(key, g, fields)
  local flat, n = {}, 0
  for _, f in ipairs_(fields) do
    local v = g[f]
    if v ~= nil then
      if GIFT_NUMBERS[f] and type_of(v) == 'number' then
        v = int(v)
      end
      flat[n + 1], flat[n + 2] = f, v
      n = n + 2
    end
  end
  call('HSET', key, unpack_(flat, 1, n))
end

-- ------------------------------------------------------------------ presence and events
-- The live nodes holding a user's connections: presence entries with a count, minus the
-- nodes the caller knows to be dead (A.dead: heartbeat older than the node TTL, from the
-- registry it reads every heartbeat; the registry lives in another slot).
local DEAD
local function live_nodes(user)
  if DEAD == nil then
    DEAD = {}
    if A.dead then
      for _, node in ipairs_(A.dead) do
        DEAD[node] = true
      end
    end
  end
  local nodes = {}
  local flat = call('HGETALL', ukey(user, 'presence'))
  for i = 1, #flat, 2 do
    if num(flat[i + 1]) > 0 and not DEAD[flat[i]] then
      nodes[#nodes + 1] = flat[i]
    end
  end
  return nodes
end

-- This server's replication id. It changes when a replica is promoted (and when a server
-- starts without its replication state): exactly when the newest writes, stream tails
-- included, may have been lost while offsets go on from an older seq. Asked once per run.
local replid  -- begin() forgets it: a failover may come between two calls
local function replication_id()
  if replid == nil then
    local info = call('INFO', 'replication')
    local _, at = find(info, 'master_replid:', 1, true)
    replid = at and match(info, '^%x+', at + 1) or ''
  end
  return replid
end

-- The user's stream epoch, created when absent or when the stream may have lost its tail
-- (the replication id it was written under is not this server's any more). A new epoch
-- means the history is gone: the old stream goes too (its ids would collide with the
-- restarted offsets). Clients then reconnect, are told recovered=false, and rely on the
-- pending list. A.ep is a fresh candidate from the caller.
local function ensure_epoch(user)
  local meta = ukey(user, 'evmeta')
  local stored = call('HMGET', meta, 'epoch', 'replid', 'seq')
  local current = replication_id()
  -- a sequence that is no whole number is as good as lost: a new epoch starts it again
  if stored[1] and stored[2] == current and whole(stored[3]) then
    return stored[1]
  end
  call('HSET', meta, 'epoch', A.ep, 'replid', current, 'seq', 0)
  call('DEL', ukey(user, 'ev'))
  return A.ep
end

-- The channel of a gateway node on this Redis node: in the home slot (sharded pub/sub: the
-- message stays on the shard that owns the slot). `tag` (the user's slot tag) serves a
-- caller that gives no home (the benchmark's redis-benchmark).
local function node_channel(tag, node)
  return tkey(HOME or tag, 'node:' .. node)
end

-- Append an event to the user's stream (entry id <offset>-0) and publish the same bytes on
-- the channel of every live node of the user on this Redis node. `tag` is the user's slot
-- tag; `nodes` may be passed when the caller already has them.
local function emit(user, tag, kind, gift, nodes)
  local meta = ukey(user, 'evmeta')
  local epoch = ensure_epoch(user)
  local offset = call('HINCRBY', meta, 'seq', '1')
  local payload = pack({u = user, ep = epoch, o = offset, e = kind, g = public(gift)})
  call('XADD', ukey(user, 'ev'), 'MAXLEN', '~', A.maxlen, format('%d-0', offset), 'p', payload)
  for _, node in ipairs_(nodes or live_nodes(user)) do
    call('SPUBLISH', node_channel(tag, node), payload)
  end
end

-- ------------------------------------------------------------------ request rates
-- The user's request rate over every node (clearing/rates.py), as a token bucket kept in one
-- number: the theoretical arrival time (GCRA) in us, under {user}:rate while it is in the
-- future. True: the request fits and is counted; false: it does not, nothing written.
-- `burst` requests fit at once, then one per `interval` us. interval 0 (or nil): no limit.
-- Whole microseconds keep a high rate's interval exact (NOW * 1000 stays far below 2^53).
-- A stored value that is no number reads as an idle user.
local function check_rate(user, interval, burst)
  if not interval or interval == 0 then
    return true
  end
  local rate_key, now = ukey(user, 'rate'), NOW * 1000
  local tat = math.max(num(call('GET', rate_key)), now)
  if tat - now > (burst - 1) * interval then
    return false
  end
  tat = tat + interval
  rate_to_take = {rate_key, string.format('%d', tat), math.floor((tat - now) / 1000) + 1}
  return true
end

local function take_rate(user, interval, burst)
  local ok = check_rate(user, interval, burst)
  take_pending_rate()
  return ok
end

-- ------------------------------------------------------------------ points
-- Entries dropped from a full points log at a time (one XRANGE + XDEL every this many awards).
local POINTLOG_TRIM = 64

-- One award: the user's total and log move together. The log keeps about A.pointlog_max
-- entries; the oldest are dropped in batches and their sum kept in `trimmed`, so that
-- total = trimmed + the retained entries (what the invariant checks, reading a bounded log).
-- num() reads a hand-edited entry as 0 (the invariant then reports it) instead of failing
-- half-way through the writes.
-- A total never passes MAX_COUNTER (the caller checked it reads as a whole number): the
-- award is cut to fit, and the log records what was added.
-- `total`: the user's points total when the caller read it with its counter check, before its
-- first write (gift_answer.lua points_total), so that it is not read again (each command in a
-- script costs thousands of instructions, and an accept awards points on both sides).
local function add_points(user, tag, points, g, why, app, total)
  local key, log, gift_id = ukey(user, 'points'), ukey(user, 'pointlog'), g.gift_id
  if total == nil then
    total = whole(call('HGET', key, 'total')) or MAX_COUNTER
  end
  points = math.min(points, MAX_COUNTER - total)
  if points <= 0 then
    return
  end
  call('HINCRBY', key, 'total', points)
  ledger(tag, 'points', 'awards:' .. tag, 'points:' .. user, 'points', points, g, why)
  call('XADD', log, '*', 'p', points, 'g', gift_id, 'why', why, 'app', app)
  if call('XLEN', log) > A.pointlog_max then
    local dropped, ids = 0, {}
    for i, entry in ipairs_(call('XRANGE', log, '-', '+', 'COUNT', POINTLOG_TRIM)) do
      ids[i] = entry[1]
      for j = 1, #entry[2], 2 do
        if entry[2][j] == 'p' then
          dropped = dropped + num(entry[2][j + 1])
        end
      end
    end
    call('XDEL', log, unpack_(ids))
    call('HINCRBY', key, 'trimmed', dropped)
  end
end

-- ------------------------------------------------------------------ the start of a call
-- Every script's function calls this first, with its ARGV; a reply to return at once (the
-- ledger is not fit to write to) or nil.
-- msgpack from clearing/lua.py; JSON (a first byte '{', which msgpack never starts a map
-- with) from the benchmark's redis-benchmark, whose arguments cannot hold a NUL byte.
local function begin(argv)
  if call == nil then
    call, format, type_of, ipairs_, pairs_, unpack_ = redis.call, string.format, type, ipairs, pairs, unpack
    tonum, find, match, abs, pack = tonumber, string.find, string.match, math.abs, cmsgpack.pack
    byte, unpack_map = string.byte, cmsgpack.unpack
  end
  A = byte(argv[1], 1) == 123 and cjson.decode(argv[1]) or unpack_map(argv[1])
  PREFIX, NOW, HOME, INDEXED = A.p, A.now, A.home, nil
  rate_to_take, DEAD, replid, ACCOUNTS = nil, nil, nil, nil
  LEDGER_MAX, LEDGER_OP, LEDGER_OFF = A.lmax, A.op, A.loff == 1
  ledger_seq, ledger_buf, ledger_order = 0, {}, {}
  -- The touch of the home slot: the ledger stream's TYPE for a script that writes records
  -- (absent: 'none'; any type but a stream would make XADD fail), else the sweep index's.
  local ledger_type
  if HOME and LEDGER_MAX ~= nil then
    ledger_type = call('TYPE', ledger_key(HOME)).ok
  elseif HOME then
    sweep_indexed()
  end
  if LEDGER_MAX ~= nil and (type_of(LEDGER_MAX) ~= 'number' or LEDGER_MAX < 1 or LEDGER_MAX % 1 ~= 0
      or type_of(LEDGER_OP) ~= 'string' or (HOME and ledger_type ~= 'stream' and ledger_type ~= 'none')) then
    return pack({err = 'CORRUPT'})
  end
  return nil
end

-- ---------------------------------------------------------------- the step libraries and scripts follow


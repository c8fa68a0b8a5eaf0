-- lib.lua: prepended to every other script of this folder by clearing/lua.py, so each
-- EVALSHA body is self-contained (Redis scripts cannot import one another).
--
-- Common ARGV header, the same for every script (built by clearing.lua.ScriptRunner):
--   ARGV[1] key prefix (the {hash tag} every key shares, so a script may derive keys it
--           cannot name in KEYS, e.g. the sender of a gift it has not read yet, and still
--           stay in one Redis Cluster slot)
--   ARGV[2] now, ms since the epoch: caller time, never TIME, so a test can move the clock
--           and a replica replays the same effects
--   ARGV[3] epoch candidate for a user stream that has none yet ("" when the script emits
--           no event)
--   ARGV[4] node_ttl_ms   ARGV[5] stream_maxlen   ARGV[6] gift_retention_ms
--   ARGV[7] quota counter TTL ms
-- Script-specific ARGV start at ARGV[8].
--
-- Numbers: Lua numbers are doubles. Every amount, count and time stays below 2^53 (the
-- Python side refuses bigger inputs), so tonumber() is exact and redis.call() formats them
-- as plain integers. Never concatenate a large number with `..` (that uses %.14g).
-- Printing a number for redis.call (%.17g) costs about as much as a small command, so
-- constant arguments are written as strings ('1'), and values that only pass through stay
-- the caller's strings.
--
-- Stored values: a script reads, checks and computes everything before its first write,
-- values read from Redis included (settings, festivals, quotes, rooms, users, gifts,
-- counters), because Redis keeps the writes a failing script made before it failed. A
-- value that is not what this code writes (an older version's document, a hand edit, a
-- bug) gives the setting's default, a refusal, or, for a ledger counter the script must
-- change, an error before any write: never a half-done operation.

local PREFIX = ARGV[1]
local NOW = tonumber(ARGV[2])
local EPOCH_CANDIDATE = ARGV[3]
-- Left as the caller's strings (see Numbers above): most scripts never use them, and
-- they mostly pass straight into a command.
local NODE_TTL = ARGV[4]
local STREAM_MAXLEN = ARGV[5]
local RETENTION = ARGV[6]
local QUOTA_TTL = ARGV[7]

-- Above this, doubles stop counting every unit (clearing.lua.MAX_SAFE_INT).
local MAX_SAFE = 9007199254740991

-- A stored value as a whole number within +-MAX_SAFE: a Redis string of decimal digits
-- (optional minus sign; not " 7", "1e3" or "0x10", which tonumber would take and Python's
-- int() not all), or a Lua number; nil for anything else, absence included.
local function whole(v)
  if type(v) == 'string' then
    if #v > 17 or not string.find(v, '^%-?%d+$') then
      return nil
    end
    v = tonumber(v)
  elseif type(v) ~= 'number' or v ~= math.floor(v) then
    return nil
  end
  if v > MAX_SAFE or v < -MAX_SAFE then
    return nil
  end
  return v + 0  -- -0 becomes 0
end

-- Keys, spelled as clearing/keys.py spells them: key('bal', u) is KeySchema.balance(u),
-- key('pending') is KeySchema.pending(). The tests read every key through KeySchema, so a
-- drift here fails them. One function rather than a table of one function per kind of
-- key: every function this file defines is created again on each script run, and a table
-- of 35 of them cost as much as a dozen Redis commands.
local function key(kind, id)
  if id == nil then
    return PREFIX .. ':' .. kind
  end
  return PREFIX .. ':' .. kind .. ':' .. id
end

-- The day's quota counters of a gift: the sender's sends, the recipient's receipts, and the
-- recipient's receipts from this sender ('|' cannot occur in an id, so (a:b, c) and
-- (a, b:c) never share a counter).
local function quota_keys(day, sender, recipient)
  return key('q:send:' .. day, sender), key('q:recv:' .. day, recipient),
         key('q:recvp:' .. day, recipient .. '|' .. sender)
end

local function reply(t)
  return cmsgpack.pack(t)
end

-- A refusal: nothing was written (except GIFT_EXPIRED, whose expiry is the point).
local function refuse(code, gift)
  return cmsgpack.pack({err = code, gift = gift})
end

local GIFT_NUMBERS = {qty = true, cost = true, amount = true, created_at_ms = true,
                      expires_at_ms = true, resolved_at_ms = true}

-- HGETALL of a gift hash -> (record table with GiftRecord's field names, quota day,
-- whether every number field holds a whole number). The day is stored for quota release
-- only and is not part of the record.
local function gift_map(id, flat)
  local g = {gift_id = id}
  local day
  local numbers_ok = true
  for i = 1, #flat, 2 do
    local f, v = flat[i], flat[i + 1]
    if f == 'day' then
      day = v
    elseif GIFT_NUMBERS[f] then
      g[f] = whole(v)
      numbers_ok = numbers_ok and g[f] ~= nil
    else
      g[f] = v
    end
  end
  return g, day, numbers_ok
end

-- A gift record the scripts can act on: every field reserve.lua writes, of its type, and
-- 0 < amount <= cost (a cost below the amount would credit cards nobody paid for). A
-- record that is not (a hand edit, a bug) is left alone and reported by the invariant
-- check; finish() never starts on it.
local function well_formed(g, numbers_ok)
  local state = g.state
  return numbers_ok and (state == 'pending' or state == 'accepted' or state == 'declined' or state == 'expired')
    and g.sender ~= nil and g.recipient ~= nil and g.kind ~= nil and g.sender ~= g.recipient
    and g.qty ~= nil and g.qty >= 1 and g.cost ~= nil and g.amount ~= nil and g.amount > 0
    and g.amount <= g.cost and g.created_at_ms ~= nil and g.expires_at_ms ~= nil
end

-- The live nodes of a user, and of a second user when one is given: nodes holding at least
-- one connection of the user whose heartbeat is newer than now - node_ttl (a node that
-- stopped beating is presumed dead even before it is reaped). One ZMSCORE covers the nodes
-- of both users. Each list keeps the order of the user's presence hash.
local function live_nodes(user, other)
  local names, owner = {}, {}
  for i, u in ipairs({user, other}) do
    local flat = redis.call('HGETALL', key('presence', u))
    for j = 1, #flat, 2 do
      if (tonumber(flat[j + 1]) or 0) > 0 then  -- a count that is no number: no connection
        names[#names + 1] = flat[j]
        owner[#names] = i
      end
    end
  end
  local lists = {{}, {}}
  if #names > 0 then
    local cutoff = NOW - tonumber(NODE_TTL)
    -- a node that is not registered scores nil, which Lua sees as false
    for k, beat in ipairs(redis.call('ZMSCORE', key('nodes'), unpack(names))) do
      if beat and tonumber(beat) > cutoff then
        local list = lists[owner[k]]
        list[#list + 1] = names[k]
      end
    end
  end
  return lists[1], lists[2]
end

-- This server's replication id. It changes when a replica is promoted (and when a server
-- starts without its replication state): exactly when the newest writes, stream tails
-- included, may have been lost while offsets go on from an older seq. Asked once per script
-- run (INFO is among the dearest commands a gift runs): a script is atomic, so the id
-- cannot change during it.
local replid
local function replication_id()
  if replid == nil then
    local info = redis.call('INFO', 'replication')
    local _, at = string.find(info, 'master_replid:', 1, true)
    replid = at and string.match(info, '^%x+', at + 1) or ''
  end
  return replid
end

-- The user's stream epoch, created when absent or when the stream may have lost its tail
-- (the replication id it was written under is not this server's any more). A new epoch
-- means the history is gone: whatever stream is left belongs to the old one, and its entry
-- ids would collide with the restarted offsets, so it goes too. Clients then reconnect,
-- are told recovered=false, and rely on the pending list. A sequence that is not a whole
-- number is a lost history too: emit() must be able to count on from it.
local function ensure_epoch(user, meta)
  meta = meta or key('evmeta', user)
  local stored = redis.call('HMGET', meta, 'epoch', 'replid', 'seq')
  local current = replication_id()
  local seq = whole(stored[3] or 0)
  if stored[1] and stored[2] == current and seq and seq >= 0 and seq < MAX_SAFE then
    return stored[1]
  end
  redis.call('HSET', meta, 'epoch', EPOCH_CANDIDATE, 'replid', current, 'seq', 0)
  redis.call('DEL', key('ev', user))
  return EPOCH_CANDIDATE
end

-- Append an event to the user's stream (entry id <offset>-0) and publish the same bytes to
-- every live node of the user. `nodes` may be passed when the caller already has them.
local function emit(user, kind, gift, nodes)
  local meta = key('evmeta', user)
  local epoch = ensure_epoch(user, meta)
  local offset = redis.call('HINCRBY', meta, 'seq', '1')
  local payload = cmsgpack.pack({u = user, ep = epoch, o = offset, e = kind, g = gift})
  redis.call('XADD', key('ev', user), 'MAXLEN', '~', STREAM_MAXLEN, offset .. '-0', 'p', payload)
  for _, node in ipairs(nodes or live_nodes(user)) do
    redis.call('PUBLISH', key('node', node), payload)
  end
end

-- The user's request rate over every node (clearing/rates.py), as a token bucket kept in one
-- number: the theoretical arrival time (GCRA) in us, under {p}:rate:<user> while it is in
-- the future. True: the request fits and is counted; false: it does not, nothing written.
-- `burst` requests fit at once, then one per `interval` us. interval '0': no limit. Whole
-- microseconds keep a high rate's interval exact (NOW * 1000 stays far below 2^53).
local function take_rate(user, interval, burst)
  interval = tonumber(interval)
  if interval == 0 then
    return true
  end
  local rate_key, now = key('rate', user), NOW * 1000
  local tat = math.max(tonumber(redis.call('GET', rate_key) or '0'), now)
  if tat - now > (tonumber(burst) - 1) * interval then
    return false
  end
  tat = tat + interval
  redis.call('SET', rate_key, tat, 'PX', math.floor((tat - now) / 1000) + 1)
  return true
end

-- Functions that only some scripts need come from a maker the script calls once: every
-- function defined at the top of this file is created again on every run of every script.

-- The scene settings, festivals and exact per-mille prices, for the scripts that price or
-- reward: local scenes = scene_reader(), then scenes.doc(defaults), scenes.values(doc,
-- defaults, name, ...), scenes.tiers(doc, defaults), scenes.festival(),
-- scenes.festival_entry(raw), scenes.per_mille(n, permille, up), scenes.is_id(v).
local function scene_reader()
  -- n * permille / 1000 rounded down, or up when `up`, exact whenever the result is below
  -- 2^53: n is split at its thousands so that no product leaves the doubles' exact range (a
  -- larger result is larger than MAX_SAFE too, which the callers refuse or clamp).
  local function per_mille(n, permille, up)
    local low = n % 1000
    local part = low * permille
    local rounded = up and math.floor((part + 999) / 1000) or math.floor(part / 1000)
    return (n - low) / 1000 * permille + rounded
  end

  -- An id as clearing/keys.py's is_valid_id: 1 to 64 of A-Z a-z 0-9 _ . : -
  local function is_id(v)
    return type(v) == 'string' and #v >= 1 and #v <= 64 and not string.find(v, '[^%w_.:%-]')
  end

  -- The scene settings document (clearing/scene_config.py): the stored one, or the defaults
  -- the caller passed. Read per call so that every node sees an operator's change at once.
  -- Documents these scripts may read off their text (below): the caller's defaults, and a
  -- stored document whose SHA-1 is the one Scenes.set_config stored next to it, i.e. one
  -- that clearing/scene_config.py validated and wrote in its layout. Any other document (an
  -- older version's, a hand edit, one an older node wrote) is decoded and checked.
  local trusted_docs = {}
  local function scene_doc(default_json)
    trusted_docs[default_json] = true
    local stored = redis.call('MGET', key('scene:config'), key('scene:config:sha1'))
    local doc = stored[1]
    if not doc then
      return default_json
    end
    if stored[2] and stored[2] == redis.sha1hex(doc) then
      trusted_docs[doc] = true
    end
    return doc
  end

  -- The ranges clearing/scene_config.py enforces on the settings the scripts read (a test
  -- compares them). A stored setting out of its range, of another type or missing takes the
  -- caller's default instead, field by field, exactly as Scenes.config() reads the same
  -- document, so the admin API shows what the scripts apply.
  local SCENE_LOW = {newcomer_age_ms = 0, newcomer_free_gifts = 0, mentor_reward_units = 0,
                     apprentice_reward_units = 0, frame_price_units = 0, points_per_card = 0,
                     quote_ttl_ms = 1}
  local SCENE_HIGH = {newcomer_age_ms = 1099511627776, newcomer_free_gifts = 1099511627776,
                      mentor_reward_units = 1099511627776, apprentice_reward_units = 1099511627776,
                      frame_price_units = 1099511627776, points_per_card = 1000000,
                      quote_ttl_ms = 86400000}
  local PERMILLE_MAX, MAX_TIERS, MAX_MIN_VIEWERS = 10000, 16, 1099511627776

  -- A stored setting as the admin API would accept it, or nil. The number returned is
  -- whole()'s (a JSON -0.0 becomes 0: redis.call would print -0 as "-0", which HINCRBY refuses).
  local function checked_setting(name, v)
    if name == 'promo_account' then
      return is_id(v) and v or nil
    end
    v = type(v) == 'number' and whole(v)
    if v and v >= SCENE_LOW[name] and v <= SCENE_HIGH[name] then
      return v
    end
    return nil
  end

  -- A document decoded whole: its top-level table, or false when it is not JSON. Once per
  -- script run for the document it reads.
  local decoded_doc, decoded
  local function decode_doc(doc)
    if doc ~= decoded_doc then
      local ok, value = pcall(cjson.decode, doc)
      decoded_doc, decoded = doc, ok and type(value) == 'table' and value
    end
    return decoded
  end

  -- Settings read straight off a trusted document's text. Decoding it whole (cjson) built
  -- every table in it, apps and live tiers included, on every gift: the largest single cost
  -- of a reserve. A trusted document is SceneConfig.to_json(), one object whose scalar fields
  -- (all but quote_ttl_ms) come before its first nested value, "apps", whose perk objects are
  -- flat. So `"name":` found ahead of the first '{' or '[' after the opening brace can only be
  -- that top-level field (a quote inside a JSON string is always escaped), the apps object
  -- ends at its first '}}', and inside it `"<app>":{` can only be that app's key (perk fields
  -- hold numbers and booleans). A field found only later, or a value of another form, is
  -- decoded instead: this only ever reaches the same values sooner.

  -- Where the document's first nested value starts: plain finds, a memchr each, where a
  -- pattern class would try every character in Lua; and once per script run, which reads one
  -- document (the same goes for the apps object's span in app_perks).
  local nested_doc, nested_at
  local function first_nested(doc)
    if doc ~= nested_doc then
      local beyond = #doc + 1
      nested_doc = doc
      nested_at = math.min(string.find(doc, '{', 2, true) or beyond, string.find(doc, '[', 2, true) or beyond)
    end
    return nested_at
  end

  -- One top-level setting as stored: off the text of a trusted document, else decoded (nil
  -- when absent or the document is not a JSON object).
  local function stored_setting(doc, name)
    if trusted_docs[doc] then
      local _, e = string.find(doc, '"' .. name .. '":', 1, true)
      if e and e < first_nested(doc) then
        local number = string.match(doc, '^(%d+)[,}]', e + 1)
        if number then
          return tonumber(number)
        end
        local text = string.match(doc, '^"([%w_.:%-]*)"[,}]', e + 1)
        if text then
          return text
        end
      end
    end
    local cfg = decode_doc(doc)
    return cfg and cfg[name]
  end

  -- Top-level settings by name (numbers are whole, strings ids), each the stored value when
  -- it is one the admin API would accept, else the default.
  local function scene_values(doc, defaults, ...)
    local names, values = {...}, {}
    for i, name in ipairs(names) do
      values[i] = checked_setting(name, stored_setting(doc, name)) or stored_setting(defaults, name)
    end
    return unpack(values, 1, #names)
  end

  -- The live tiers of a decoded document when they are what clearing/scene_config.py
  -- accepts (1 to MAX_TIERS, the first from 0 viewers, min_viewers increasing, permille
  -- from 1000 to PERMILLE_MAX and never decreasing), else nil.
  local function checked_tiers(tiers)
    if type(tiers) ~= 'table' or #tiers < 1 or #tiers > MAX_TIERS then
      return nil
    end
    for i, tier in ipairs(tiers) do
      if type(tier) ~= 'table' then
        return nil
      end
      local min, permille = tier.min_viewers, tier.permille
      if type(min) ~= 'number' or type(permille) ~= 'number' or not whole(min) or not whole(permille)
          or min < 0 or min > MAX_MIN_VIEWERS or permille < 1000 or permille > PERMILLE_MAX
          or (i == 1 and min ~= 0)
          or (i > 1 and (min <= tiers[i - 1].min_viewers or permille < tiers[i - 1].permille)) then
        return nil
      end
    end
    return tiers
  end

  local function scene_tiers(doc, defaults)
    local cfg = decode_doc(doc)
    return cfg and checked_tiers(cfg.live_tiers) or checked_tiers(decode_doc(defaults).live_tiers)
  end

  -- A festival as clearing/scenes.py stores it in the festivals hash (JSON), when it is one
  -- that Festival accepts: a name, whole 0 <= start_ms < end_ms, a multiplier in range, a
  -- frame id or none, nothing else. nil for anything else: a festival that cannot be read is
  -- not running.
  local function festival_entry(raw)
    local ok, f = pcall(cjson.decode, raw or '')
    if not ok or type(f) ~= 'table' or type(f.name) ~= 'string' then
      return nil
    end
    for field in pairs(f) do
      if field ~= 'name' and field ~= 'start_ms' and field ~= 'end_ms' and field ~= 'permille' and field ~= 'frame' then
        return nil
      end
    end
    local start_ms, end_ms, permille = f.start_ms, f.end_ms, f.permille
    if type(start_ms) ~= 'number' or type(end_ms) ~= 'number' or type(permille) ~= 'number'
        or not whole(start_ms) or not whole(end_ms) or not whole(permille)
        or start_ms < 0 or start_ms >= end_ms or permille < 1000 or permille > PERMILLE_MAX
        or not (f.frame == nil or f.frame == cjson.null or is_id(f.frame)) then
      return nil
    end
    return f
  end

  -- The festival whose window holds NOW (start <= NOW < end): its id and multiplier per
  -- mille; nil when none. Windows never overlap (clearing/scenes.py refuses it), so the only
  -- candidate is the window that started last at or before NOW. clearing/scenes.py keeps the
  -- schedule for this next to the festivals hash: a sorted set, score = start_ms, member =
  -- "<end_ms>:<permille>:<id>", plus an empty member at -inf so that it exists even with no
  -- festival. One member read instead of every festival decoded. Festivals stored before the
  -- schedule existed (no schedule yet) are still found by scanning the hash. A member or an
  -- entry that does not read as clearing/scenes.py writes it prices nothing.
  local function active_festival()
    local top = redis.call('ZREVRANGEBYSCORE', key('festivals:schedule'), ARGV[2], '-inf', 'LIMIT', '0', '1')[1]
    if top then
      local end_ms, permille, id = string.match(top, '^(%d+):(%d+):(.+)$')
      end_ms, permille = whole(end_ms), whole(permille)
      if end_ms and permille and is_id(id) and NOW < end_ms and permille >= 1000 and permille <= PERMILLE_MAX then
        return id, permille
      end
      return nil, nil
    end
    local flat = redis.call('HGETALL', key('festivals'))
    for i = 1, #flat, 2 do
      local f = festival_entry(flat[i + 1])
      if f and is_id(flat[i]) and f.start_ms <= NOW and NOW < f.end_ms then
        return flat[i], f.permille
      end
    end
    return nil, nil
  end

  return {doc = scene_doc, values = scene_values, tiers = scene_tiers, festival = active_festival,
          festival_entry = festival_entry, per_mille = per_mille, is_id = is_id, decode = decode_doc,
          trusted = trusted_docs, first_nested = first_nested, PERMILLE_MAX = PERMILLE_MAX,
          ranges = {SCENE_LOW, SCENE_HIGH, PERMILLE_MAX, MAX_TIERS, MAX_MIN_VIEWERS}}
end

-- bad_counter(moves) and apply_moves(moves), for the scripts that move amounts: local
-- bad_counter, apply_moves = counter_mover(). Moves are {key, field, delta} for HINCRBY,
-- plus the counter's current value when the caller has already read and checked it.
-- bad_counter returns nil when every counter holds a whole number (or nothing) and stays
-- one after the change, else the key that does not. The money counters are written
-- by these scripts only, and each stays at most minted (at most MAX_SAFE, mint.lua): one
-- that fails this was corrupted outside them, and the caller stops before its first write
-- (corrupt()) rather than fail half-way.
local function counter_mover()
  local function bad_counter(moves)
    for _, m in ipairs(moves) do
      local now = m[4] or whole(redis.call('HGET', m[1], m[2]) or 0)
      if now == nil or whole(now + m[3]) == nil then
        return m[1]
      end
    end
    return nil
  end

  local function apply_moves(moves)
    for _, m in ipairs(moves) do
      redis.call('HINCRBY', m[1], m[2], m[3])
    end
  end

  return bad_counter, apply_moves
end

-- The error a script returns when a value it must change is corrupt: nothing was written;
-- clients see INTERNAL, operators the key (and the invariant check's report).
local function corrupt(what)
  return redis.error_reply('CORRUPT ' .. what .. ' does not hold a whole number; nothing was changed')
end

-- plan_finish(g, day, state, scene) and finish(gift_key, plan), for the scripts that
-- resolve gifts: local plan_finish, finish = gift_finisher(scenes), with the scene_reader()
-- of a script that may accept (nil otherwise). plan_finish reads and checks everything and
-- computes every value; finish only writes, so it cannot stop half-way.
local function gift_finisher(scenes)
  local bad_counter, apply_moves = counter_mover()
  -- An app's perks (gift-rules.md section 2): sender bonus per mille, recipient multiplier
  -- per mille, joint campaign; (0, 1000, false) for an app without perks. Each field out of
  -- range or of another type takes its no-perk value (AppPerk's default), and an "apps"
  -- that is missing or no object takes the defaults' apps, as Scenes.config() reads them.
  local PERK = '^{"sender_bonus_permille":(%d+),"recipient_multiplier_permille":(%d+),"joint_campaign":(%l+)}'
  local function perk(bonus, mult, joint)
    bonus, mult = type(bonus) == 'number' and whole(bonus), type(mult) == 'number' and whole(mult)
    bonus = bonus and bonus >= 0 and bonus <= scenes.PERMILLE_MAX and bonus or 0
    mult = mult and mult >= 1000 and mult <= scenes.PERMILLE_MAX and mult or 1000
    return bonus, mult, joint == true
  end
  local apps_doc, apps_open, apps_close
  local function app_perks(doc, defaults, app)
    if type(app) ~= 'string' or #app > 32 or not string.find(app, '^[a-z0-9_]+$') then
      return 0, 1000, false  -- not an app id (clearing/scene_config.py APP_RE): none has perks
    end
    if doc ~= apps_doc then
      apps_doc, apps_open, apps_close = doc, nil, nil
      local open = scenes.first_nested(doc)
      if scenes.trusted[doc] and string.sub(doc, open - 7, open) == '"apps":{' then
        apps_open = open
        apps_close = string.sub(doc, open + 1, open + 1) == '}' and open + 1 or string.find(doc, '}}', open, true)
      end
    end
    if apps_open and apps_close then
      local at = string.find(doc, '"' .. app .. '":{', apps_open, true)
      if not at or at > apps_close then
        return 0, 1000, false
      end
      local bonus, mult, joint = string.match(doc, PERK, at + #app + 3)
      if bonus and (joint == 'true' or joint == 'false') then
        return perk(tonumber(bonus), tonumber(mult), joint == 'true')
      end
    end
    local cfg = scenes.decode(doc)
    local apps = cfg and cfg.apps
    -- cjson reads [] and {} alike; a non-empty array is no object (Scenes.config() reads
    -- an empty array as an empty object, to agree)
    if type(apps) ~= 'table' or #apps > 0 then
      if doc ~= defaults then
        return app_perks(defaults, defaults, app)
      end
      return 0, 1000, false
    end
    local p = apps[app]
    if type(p) ~= 'table' then
      return 0, 1000, false
    end
    return perk(p.sender_bonus_permille, p.recipient_multiplier_permille, p.joint_campaign)
  end

  -- The points log stays at most `maxlen` entries: once an accept would pass that, its
  -- oldest entries are folded into pointlog:folded (per user, the points of the entries no
  -- longer in the log), down to nine tenths of maxlen, at most MAX_FOLD per run (a log kept
  -- whole by an older version shrinks over a few runs instead of blocking Redis in one).
  -- So for every user: points = folded + the user's entries still in the log, which
  -- clearing/invariant.py checks without reading an unbounded stream.
  local MAX_FOLD = 1000
  local function plan_fold(adding, maxlen)
    local log = key('pointlog')
    local len = redis.call('XLEN', log)
    if adding == 0 or len + adding <= maxlen then
      return nil
    end
    local count = math.min(len + adding - (maxlen - math.floor(maxlen / 10)), MAX_FOLD, len)
    local entries = redis.call('XRANGE', log, '-', '+', 'COUNT', count + 1)
    local sums, users = {}, {}
    for i = 1, count do
      local fields, user, points = entries[i][2], nil, nil
      for j = 1, #fields, 2 do
        if fields[j] == 'u' then
          user = fields[j + 1]
        elseif fields[j] == 'p' then
          points = whole(fields[j + 1])
        end
      end
      -- an entry these scripts did not write is dropped unfolded: the invariant check
      -- already reports its user's points as not matching
      if user and points then
        if not sums[user] then
          users[#users + 1] = user
          sums[user] = 0
        end
        sums[user] = sums[user] + points
      end
    end
    local folded = {}
    if #users > 0 then
      local before = redis.call('HMGET', key('pointlog:folded'), unpack(users))
      for i, user in ipairs(users) do
        folded[#folded + 1] = user
        folded[#folded + 1] = math.min((whole(before[i] or 0) or 0) + sums[user], MAX_SAFE)
      end
    end
    return {folded = folded, next_id = entries[count + 1] and entries[count + 1][1]}
  end

  -- Perks of an accepted gift (gift-rules.md section 2): the sender's app is the one the gift
  -- was sent from, the recipient's the one it was accepted on. Bonuses round down. A total
  -- never passes MAX_SAFE (the award is cut to fit), and a total that is not a whole number
  -- (corrupted outside these scripts, reported by the invariant check) is left as it is:
  -- the gift still resolves.
  local function plan_points(plan, g, scene)
    local doc, defaults = scene.doc, scene.defaults
    local per_mille = scenes.per_mille
    local base = math.min(g.qty * scenes.values(doc, defaults, 'points_per_card'), MAX_SAFE)
    local sender_app = g.app or 'main'
    local sender_bonus, _, sender_joint = app_perks(doc, defaults, sender_app)
    local _, recipient_mult, recipient_joint = app_perks(doc, defaults, scene.app)
    local totals = redis.call('HMGET', key('points'), g.sender, g.recipient)
    local sides = {{g.sender, base + per_mille(base, sender_bonus), 'sent', sender_app},
                   {g.recipient, per_mille(base, recipient_mult), 'received', scene.app}}
    plan.points = {}
    for i, side in ipairs(sides) do
      local total = whole(totals[i] or 0)
      if side[2] > 0 and total and total < MAX_SAFE then
        side[2] = math.min(side[2], MAX_SAFE - total)
        plan.points[#plan.points + 1] = side
      end
    end
    plan.joint = sender_joint or recipient_joint
    plan.fold = plan_fold(#plan.points, scene.log_maxlen)
  end

  -- A gift accepted in a live room: the sender's contribution (the cost, in units) on the
  -- room's leaderboard, and the streamer's wish progress when it matches the wish's kind.
  -- Computed here and written with HSET: a progress or version that is no whole number
  -- counts as 0 (HINCRBY would fail on it after the money moved).
  local function plan_room(plan, g)
    local r = redis.call('HMGET', key('room', g.room), 'streamer', 'wish_kind', 'wish_progress', 'version')
    local fields = {'version', math.min((whole(r[4] or 0) or 0) + 1, MAX_SAFE)}
    if r[1] == g.recipient and r[2] == g.kind then
      fields[3], fields[4] = 'wish_progress', math.min((whole(r[3] or 0) or 0) + g.qty, MAX_SAFE)
    end
    plan.room_fields = fields
  end

  -- Move a pending gift (already validated as pending and well_formed by the caller) to a
  -- final state:
  --   accepted: held -> recipient's available `amount`, cost - amount -> consumed, points
  --             (scene = {doc, defaults, app = the recipient's app, log_maxlen}, required
  --             for this state only), room credit
  --   declined / expired: held -> back to whoever paid (the payer: the sender, or the
  --             promotion account for a newcomer's free gift, whose free slot comes back
  --             too), quota slots released
  -- then stamp it, schedule its deletion after the retention window, drop it from the
  -- queues, and tell both users. plan_finish returns the plan, or nil and the ledger key
  -- that holds no whole number (then nothing may be written).
  local function plan_finish(g, day, state, scene)
    local payer = g.payer or g.sender
    local kind, cost = g.kind, g.cost
    local plan = {g = g, state = state, payer = payer}
    local moves = {{key('held', payer), kind, -cost}, {key('holds'), kind, -cost}}
    if state == 'accepted' then
      moves[3] = {key('bal', g.recipient), kind, g.amount}
      if cost > g.amount then
        moves[4] = {key('consumed'), kind, cost - g.amount}
      end
      plan_points(plan, g, scene)
      if g.room then
        plan_room(plan, g)
      end
    else
      moves[3] = {key('bal', payer), kind, cost}
      -- Give back the gift's slots in its own day's counters. A counter that has already
      -- expired is left alone (DECR would recreate it without a TTL), and so is one that
      -- holds no whole number (DECR would fail on it).
      plan.release = {}
      if day then
        local counters = {quota_keys(day, g.sender, g.recipient)}
        for i, count in ipairs(redis.call('MGET', unpack(counters))) do
          if whole(count) then
            plan.release[#plan.release + 1] = counters[i]
          end
        end
      end
      if payer ~= g.sender then
        plan.free = key('free', g.sender)
        if not whole(redis.call('GET', plan.free)) then
          plan.free = nil
        end
      end
    end
    local bad = bad_counter(moves)
    if bad then
      return nil, bad
    end
    plan.moves = moves
    return plan
  end

  -- The writes of a plan; returns the updated record.
  local function finish(gift_key, plan)
    local g, state = plan.g, plan.state
    local sender, recipient = g.sender, g.recipient
    apply_moves(plan.moves)
    if state == 'accepted' then
      local fold = plan.fold
      if fold then
        if #fold.folded > 0 then
          redis.call('HSET', key('pointlog:folded'), unpack(fold.folded))
        end
        if fold.next_id then
          redis.call('XTRIM', key('pointlog'), 'MINID', fold.next_id)
        else
          redis.call('XTRIM', key('pointlog'), 'MAXLEN', '0')
        end
      end
      for _, side in ipairs(plan.points) do
        redis.call('HINCRBY', key('points'), side[1], side[2])
        redis.call('XADD', key('pointlog'), '*', 'u', side[1], 'p', side[2], 'g', g.gift_id, 'why', side[3],
                   'app', side[4])
      end
      if plan.joint then
        redis.call('SADD', key('campaign:joint'), sender, recipient)
      end
      if plan.room_fields then
        redis.call('ZINCRBY', key('board', g.room), g.cost, sender)
        redis.call('HSET', key('room', g.room), unpack(plan.room_fields))
      end
    else
      for _, counter in ipairs(plan.release) do
        redis.call('DECR', counter)
      end
      if plan.free then
        redis.call('DECR', plan.free)
      end
    end
    redis.call('HSET', gift_key, 'state', state, 'resolved_at_ms', NOW)
    redis.call('PEXPIRE', gift_key, RETENTION)
    redis.call('ZREM', key('pending'), g.gift_id)
    redis.call('ZREM', key('inbox', recipient), g.gift_id)
    g.state = state
    g.resolved_at_ms = NOW
    local sender_nodes, recipient_nodes = live_nodes(sender, recipient)
    emit(sender, 'outcome', g, sender_nodes)
    emit(recipient, 'outcome', g, recipient_nodes)
    return g
  end

  return plan_finish, finish
end

-- drop_node(node), for the scripts that remove nodes: local drop_node = node_dropper().
local function node_dropper()
  -- Forget a node: its users' presence entries, its user set, its heartbeat.
  local function drop_node(node)
    local users_key = key('nodeusers', node)
    for _, user in ipairs(redis.call('SMEMBERS', users_key)) do
      redis.call('HDEL', key('presence', user), node)
    end
    redis.call('DEL', users_key)
    -- and its live-room viewers: a user watching only through this node stops counting (a
    -- count that is no whole number counts as 0, so the loop cannot stop half-way)
    local rooms_key = key('noderooms', node)
    for _, entry in ipairs(redis.call('SMEMBERS', rooms_key)) do
      local sep = string.find(entry, '|', 1, true)
      if sep then
        local room, user = string.sub(entry, 1, sep - 1), string.sub(entry, sep + 1)
        local viewers = key('roomviewers', room)
        if redis.call('HDEL', key('roomconn', room), node .. '|' .. user) == 1 then
          local left = (whole(redis.call('HGET', viewers, user) or 0) or 0) - 1
          if left > 0 then
            redis.call('HSET', viewers, user, left)
          else
            redis.call('HDEL', viewers, user)
          end
        end
      end
    end
    redis.call('DEL', rooms_key)
    redis.call('ZREM', key('nodes'), node)
  end

  return drop_node
end

-- ---------------------------------------------------------------- script body follows

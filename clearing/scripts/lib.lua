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

local PREFIX = ARGV[1]
local NOW = tonumber(ARGV[2])
local EPOCH_CANDIDATE = ARGV[3]
-- Left as the caller's strings (see Numbers above): most scripts never use them, and
-- they mostly pass straight into a command.
local NODE_TTL = ARGV[4]
local STREAM_MAXLEN = ARGV[5]
local RETENTION = ARGV[6]
local QUOTA_TTL = ARGV[7]

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

-- HGETALL of a gift hash -> (record table with GiftRecord's field names, quota day).
-- The day is stored for quota release only and is not part of the record.
local function gift_map(id, flat)
  local g = {gift_id = id}
  local day
  for i = 1, #flat, 2 do
    local f, v = flat[i], flat[i + 1]
    if f == 'day' then
      day = v
    elseif GIFT_NUMBERS[f] then
      g[f] = tonumber(v)
    else
      g[f] = v
    end
  end
  return g, day
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
      if tonumber(flat[j + 1]) > 0 then
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
-- are told recovered=false, and rely on the pending list.
local function ensure_epoch(user, meta)
  meta = meta or key('evmeta', user)
  local stored = redis.call('HMGET', meta, 'epoch', 'replid')
  local current = replication_id()
  if stored[1] and stored[2] == current then
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

-- The scene settings document (clearing/scene_config.py): the stored one, or the defaults
-- the caller passed. Read per call so that every node sees an operator's change at once.
local function scene_doc(default_json)
  return redis.call('GET', key('scene:config')) or default_json
end

-- Settings read straight off the document's text. Decoding it whole (cjson) built every
-- table in it, apps and live tiers included, on every gift: the largest single cost of a
-- reserve. A document is SceneConfig.to_json(), one object whose scalar fields (all but
-- quote_ttl_ms) come before its first nested value, "apps", whose perk objects are flat.
-- So `"name":` found ahead of the first '{' or '[' after the opening brace can only be that
-- top-level field (a quote inside a JSON string is always escaped), the apps object ends at
-- its first '}}', and inside it `"<app>":{` can only be that app's key (perk fields hold
-- numbers and booleans). A field found only later, a document of another shape, or a value
-- of another form is decoded instead: this only ever reaches the same values sooner.

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

-- Top-level settings by name, as numbers (whole numbers) or strings.
local function scene_values(doc, ...)
  local names, values = {...}, {}
  local nested = first_nested(doc)
  if string.sub(doc, 1, 1) == '{' then
    for i, name in ipairs(names) do
      local _, e = string.find(doc, '"' .. name .. '":', 1, true)
      if not e or e > nested then
        break
      end
      local number = string.match(doc, '^(%d+)[,}]', e + 1)
      values[i] = number and tonumber(number) or string.match(doc, '^"([%w_.:%-]*)"[,}]', e + 1)
      if values[i] == nil then
        break
      end
    end
  end
  if #values < #names then
    local cfg = cjson.decode(doc)
    for i, name in ipairs(names) do
      values[i] = cfg[name]
    end
  end
  return unpack(values, 1, #names)
end

-- The festival whose window holds NOW (start <= NOW < end): its id and multiplier per
-- mille; nil when none. Windows never overlap (clearing/scenes.py refuses it), so the only
-- candidate is the window that started last at or before NOW. clearing/scenes.py keeps the
-- schedule for this next to the festivals hash: a sorted set, score = start_ms, member =
-- "<end_ms>:<permille>:<id>", plus an empty member at -inf so that it exists even with no
-- festival. One member read instead of every festival decoded. Festivals stored before the
-- schedule existed (no schedule yet) are still found by scanning the hash.
local function active_festival()
  local top = redis.call('ZREVRANGEBYSCORE', key('festivals:schedule'), ARGV[2], '-inf', 'LIMIT', '0', '1')[1]
  if top then
    local end_ms, permille, id = string.match(top, '^(%d+):(%d+):(.+)$')
    if id and NOW < tonumber(end_ms) then
      return id, tonumber(permille)
    end
    return nil, nil
  end
  local flat = redis.call('HGETALL', key('festivals'))
  for i = 1, #flat, 2 do
    local f = cjson.decode(flat[i + 1])
    if f.start_ms <= NOW and NOW < f.end_ms then
      return flat[i], f.permille
    end
  end
  return nil, nil
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

-- finish(gift_key, g, day, state, doc, recipient_app) and its helpers, for the scripts
-- that resolve gifts: local finish = gift_finisher().
local function gift_finisher()
  -- Give back the gift's slots in its own day's counters. A counter that has already
  -- expired is left alone: DECR would recreate it without a TTL.
  local function release_quota(g, day)
    for _, counter in ipairs({quota_keys(day, g.sender, g.recipient)}) do
      if redis.call('EXISTS', counter) == 1 then
        redis.call('DECR', counter)
      end
    end
  end

  -- One entry of the points ledger: the total and the log move together, never below zero.
  local function add_points(user, points, gift_id, why, app)
    if points > 0 then
      redis.call('HINCRBY', key('points'), user, points)
      redis.call('XADD', key('pointlog'), '*', 'u', user, 'p', points, 'g', gift_id, 'why', why, 'app', app)
    end
  end

  -- An app's perks (gift-rules.md section 2): sender bonus per mille, recipient multiplier
  -- per mille, joint campaign; (0, 1000, false) for an app without perks.
  local PERK = '^{"sender_bonus_permille":(%d+),"recipient_multiplier_permille":(%d+),"joint_campaign":(%l+)}'
  local apps_doc, apps_open, apps_close
  local function app_perks(doc, app)
    if doc ~= apps_doc then
      local open = first_nested(doc)
      apps_doc, apps_open, apps_close = doc, nil, nil
      if string.sub(doc, open - 7, open) == '"apps":{' then
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
        return tonumber(bonus), tonumber(mult), joint == 'true'
      end
    end
    local p = cjson.decode(doc).apps[app] or {}
    return p.sender_bonus_permille or 0, p.recipient_multiplier_permille or 1000, p.joint_campaign == true
  end

  -- Perks of an accepted gift (gift-rules.md section 2): the sender's app is the one the gift
  -- was sent from, the recipient's the one it was accepted on. Bonuses round down.
  local function award_points(g, doc, recipient_app)
    local base = g.qty * scene_values(doc, 'points_per_card')
    local sender_bonus, _, sender_joint = app_perks(doc, g.app or 'main')
    local _, recipient_mult, recipient_joint = app_perks(doc, recipient_app)
    add_points(g.sender, base + math.floor(base * sender_bonus / 1000), g.gift_id, 'sent', g.app or 'main')
    add_points(g.recipient, math.floor(base * recipient_mult / 1000), g.gift_id, 'received', recipient_app)
    if sender_joint or recipient_joint then
      redis.call('SADD', key('campaign:joint'), g.sender, g.recipient)
    end
  end

  -- A gift accepted in a live room: the sender's contribution (the cost, in units) on the
  -- room's leaderboard, and the streamer's wish progress when it matches the wish's kind.
  local function room_credit(g)
    local room = key('room', g.room)
    redis.call('ZINCRBY', key('board', g.room), g.cost, g.sender)
    local r = redis.call('HMGET', room, 'streamer', 'wish_kind')
    if r[1] == g.recipient and r[2] == g.kind then
      redis.call('HINCRBY', room, 'wish_progress', g.qty)
    end
    redis.call('HINCRBY', room, 'version', 1)
  end

  -- Move a pending gift (already validated as pending by the caller) to a final state:
  --   accepted: held -> recipient's available `amount`, cost - amount -> consumed, points
  --             (doc, the scene settings document, and recipient_app are required for this
  --             state only), room credit
  --   declined / expired: held -> back to whoever paid (the payer: the sender, or the
  --             promotion account for a newcomer's free gift, whose free slot comes back
  --             too), quota slots released
  -- then stamp it, schedule its deletion after the retention window, drop it from the
  -- queues, and tell both users. Returns the updated record.
  local function finish(gift_key, g, day, state, doc, recipient_app)
    local sender, recipient, kind, cost = g.sender, g.recipient, g.kind, g.cost
    local payer = g.payer or sender
    redis.call('HINCRBY', key('held', payer), kind, -cost)
    redis.call('HINCRBY', key('holds'), kind, -cost)
    if state == 'accepted' then
      redis.call('HINCRBY', key('bal', recipient), kind, g.amount)
      if cost > g.amount then
        redis.call('HINCRBY', key('consumed'), kind, cost - g.amount)
      end
      award_points(g, doc, recipient_app)
      if g.room then
        room_credit(g)
      end
    else
      redis.call('HINCRBY', key('bal', payer), kind, cost)
      release_quota(g, day)
      if payer ~= sender then
        local free = key('free', sender)
        if redis.call('EXISTS', free) == 1 then
          redis.call('DECR', free)
        end
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

  return finish
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
    -- and its live-room viewers: a user watching only through this node stops counting
    local rooms_key = key('noderooms', node)
    for _, entry in ipairs(redis.call('SMEMBERS', rooms_key)) do
      local sep = string.find(entry, '|', 1, true)
      local room, user = string.sub(entry, 1, sep - 1), string.sub(entry, sep + 1)
      local viewers = key('roomviewers', room)
      if redis.call('HDEL', key('roomconn', room), node .. '|' .. user) == 1
          and redis.call('HINCRBY', viewers, user, -1) <= 0 then
        redis.call('HDEL', viewers, user)
      end
    end
    redis.call('DEL', rooms_key)
    redis.call('ZREM', key('nodes'), node)
  end

  return drop_node
end

-- ---------------------------------------------------------------- script body follows

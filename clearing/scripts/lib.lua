-- lib.lua: prepended to every other script of this folder by clearing/scripts.py, so each
-- EVALSHA body is self-contained (Redis scripts cannot import one another).
--
-- Common ARGV header, the same for every script (built by clearing.scripts.ScriptRunner):
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

local PREFIX = ARGV[1]
local NOW = tonumber(ARGV[2])
local EPOCH_CANDIDATE = ARGV[3]
local NODE_TTL = tonumber(ARGV[4])
local STREAM_MAXLEN = ARGV[5]
local RETENTION = tonumber(ARGV[6])
local QUOTA_TTL = tonumber(ARGV[7])

-- Mirror of clearing/keys.py. The tests read every key through KeySchema, so a drift here
-- fails them.
local K = {}
function K.user(u) return PREFIX .. ':user:' .. u end
function K.users() return PREFIX .. ':users' end
function K.bal(u) return PREFIX .. ':bal:' .. u end
function K.held(u) return PREFIX .. ':held:' .. u end
function K.follows(u) return PREFIX .. ':follows:' .. u end
function K.blocks(u) return PREFIX .. ':blocks:' .. u end
function K.minted() return PREFIX .. ':minted' end
function K.holds() return PREFIX .. ':holds' end
function K.consumed() return PREFIX .. ':consumed' end
function K.gift(id) return PREFIX .. ':gift:' .. id end
function K.pending() return PREFIX .. ':pending' end
function K.inbox(u) return PREFIX .. ':inbox:' .. u end
function K.send_quota(day, u) return PREFIX .. ':q:send:' .. day .. ':' .. u end
function K.recv_quota(day, u) return PREFIX .. ':q:recv:' .. day .. ':' .. u end
-- '|' cannot occur in an id, so (a:b, c) and (a, b:c) never share a counter.
function K.pair_quota(day, r, s) return PREFIX .. ':q:recvp:' .. day .. ':' .. r .. '|' .. s end
function K.events(u) return PREFIX .. ':ev:' .. u end
function K.evmeta(u) return PREFIX .. ':evmeta:' .. u end
function K.presence(u) return PREFIX .. ':presence:' .. u end
function K.nodes() return PREFIX .. ':nodes' end
function K.node_users(n) return PREFIX .. ':nodeusers:' .. n end
function K.channel(n) return PREFIX .. ':node:' .. n end
function K.scene() return PREFIX .. ':scene:config' end
function K.festivals() return PREFIX .. ':festivals' end
function K.free(u) return PREFIX .. ':free:' .. u end
function K.mentors() return PREFIX .. ':mentors' end
function K.inventory(u) return PREFIX .. ':inv:' .. u end
function K.points() return PREFIX .. ':points' end
function K.pointlog() return PREFIX .. ':pointlog' end
function K.joint() return PREFIX .. ':campaign:joint' end
function K.room(r) return PREFIX .. ':room:' .. r end
function K.room_conns(r) return PREFIX .. ':roomconn:' .. r end
function K.room_viewers(r) return PREFIX .. ':roomviewers:' .. r end
function K.node_rooms(n) return PREFIX .. ':noderooms:' .. n end
function K.board(r) return PREFIX .. ':board:' .. r end
function K.quote(id) return PREFIX .. ':quote:' .. id end

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

-- Nodes holding at least one connection of the user whose heartbeat is newer than
-- now - node_ttl: a node that stopped beating is presumed dead even before it is reaped.
local function live_nodes(user)
  local flat = redis.call('HGETALL', K.presence(user))
  local out = {}
  local cutoff = NOW - NODE_TTL
  for i = 1, #flat, 2 do
    if tonumber(flat[i + 1]) > 0 then
      local beat = redis.call('ZSCORE', K.nodes(), flat[i])
      if beat and tonumber(beat) > cutoff then
        out[#out + 1] = flat[i]
      end
    end
  end
  return out
end

-- This server's replication id. It changes when a replica is promoted (and when a server
-- starts without its replication state): exactly when the newest writes, stream tails
-- included, may have been lost while offsets go on from an older seq.
local function replication_id()
  return string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)') or ''
end

-- The user's stream epoch, created when absent or when the stream may have lost its tail
-- (the replication id it was written under is not this server's any more). A new epoch
-- means the history is gone: whatever stream is left belongs to the old one, and its entry
-- ids would collide with the restarted offsets, so it goes too. Clients then reconnect,
-- are told recovered=false, and rely on the pending list.
local function ensure_epoch(user)
  local meta = K.evmeta(user)
  local stored = redis.call('HMGET', meta, 'epoch', 'replid')
  local replid = replication_id()
  if stored[1] and stored[2] == replid then
    return stored[1]
  end
  redis.call('HSET', meta, 'epoch', EPOCH_CANDIDATE, 'replid', replid, 'seq', 0)
  redis.call('DEL', K.events(user))
  return EPOCH_CANDIDATE
end

-- Append an event to the user's stream (entry id <offset>-0) and publish the same bytes to
-- every live node of the user. `nodes` may be passed when the caller already has them.
local function emit(user, kind, gift, nodes)
  local epoch = ensure_epoch(user)
  local offset = redis.call('HINCRBY', K.evmeta(user), 'seq', 1)
  local payload = cmsgpack.pack({u = user, ep = epoch, o = offset, e = kind, g = gift})
  redis.call('XADD', K.events(user), 'MAXLEN', '~', STREAM_MAXLEN, offset .. '-0', 'p', payload)
  for _, node in ipairs(nodes or live_nodes(user)) do
    redis.call('PUBLISH', K.channel(node), payload)
  end
end

-- Give back the gift's slots in its own day's counters. A counter that has already
-- expired is left alone: DECR would recreate it without a TTL.
local function release_quota(g, day)
  local counters = {K.send_quota(day, g.sender), K.recv_quota(day, g.recipient),
                    K.pair_quota(day, g.recipient, g.sender)}
  for _, key in ipairs(counters) do
    if redis.call('EXISTS', key) == 1 then
      redis.call('DECR', key)
    end
  end
end

-- The scene settings (clearing/scene_config.py): the stored document, or the defaults the
-- caller passed as JSON. Read per call so that every node sees an operator's change at once.
local function scene_config(default_json)
  return cjson.decode(redis.call('GET', K.scene()) or default_json)
end

-- The festival whose window holds NOW (start <= NOW < end): id, record; nil when none.
-- Overlapping windows are refused when configured, so at most one matches.
local function active_festival()
  local flat = redis.call('HGETALL', K.festivals())
  for i = 1, #flat, 2 do
    local f = cjson.decode(flat[i + 1])
    if f.start_ms <= NOW and NOW < f.end_ms then
      return flat[i], f
    end
  end
  return nil, nil
end

local function perk_of(cfg, app)
  local p = cfg.apps[app] or {}
  return p.sender_bonus_permille or 0, p.recipient_multiplier_permille or 1000, p.joint_campaign == true
end

-- One entry of the points ledger: the total and the log move together, never below zero.
local function add_points(user, points, gift_id, why, app)
  if points > 0 then
    redis.call('HINCRBY', K.points(), user, points)
    redis.call('XADD', K.pointlog(), '*', 'u', user, 'p', points, 'g', gift_id, 'why', why, 'app', app)
  end
end

-- Perks of an accepted gift (gift-rules.md section 2): the sender's app is the one the gift
-- was sent from, the recipient's the one it was accepted on. Bonuses round down.
local function award_points(g, cfg, recipient_app)
  local base = g.qty * cfg.points_per_card
  local sender_bonus, _, sender_joint = perk_of(cfg, g.app or 'main')
  local _, recipient_mult, recipient_joint = perk_of(cfg, recipient_app)
  add_points(g.sender, base + math.floor(base * sender_bonus / 1000), g.gift_id, 'sent', g.app or 'main')
  add_points(g.recipient, math.floor(base * recipient_mult / 1000), g.gift_id, 'received', recipient_app)
  if sender_joint or recipient_joint then
    redis.call('SADD', K.joint(), g.sender, g.recipient)
  end
end

-- A gift accepted in a live room: the sender's contribution (the cost, in units) on the
-- room's leaderboard, and the streamer's wish progress when it matches the wish's kind.
local function room_credit(g)
  local room = K.room(g.room)
  redis.call('ZINCRBY', K.board(g.room), g.cost, g.sender)
  local r = redis.call('HMGET', room, 'streamer', 'wish_kind')
  if r[1] == g.recipient and r[2] == g.kind then
    redis.call('HINCRBY', room, 'wish_progress', g.qty)
  end
  redis.call('HINCRBY', room, 'version', 1)
end

-- Move a pending gift (already validated as pending by the caller) to a final state:
--   accepted: held -> recipient's available `amount`, cost - amount -> consumed, points
--             (cfg and recipient_app are required for this state only), room credit
--   declined / expired: held -> back to whoever paid (the payer: the sender, or the
--             promotion account for a newcomer's free gift, whose free slot comes back
--             too), quota slots released
-- then stamp it, schedule its deletion after the retention window, drop it from the
-- queues, and tell both users. Returns the updated record.
local function finish(key, g, day, state, cfg, recipient_app)
  local sender, recipient, kind, cost = g.sender, g.recipient, g.kind, g.cost
  local payer = g.payer or sender
  redis.call('HINCRBY', K.held(payer), kind, -cost)
  redis.call('HINCRBY', K.holds(), kind, -cost)
  if state == 'accepted' then
    redis.call('HINCRBY', K.bal(recipient), kind, g.amount)
    if cost > g.amount then
      redis.call('HINCRBY', K.consumed(), kind, cost - g.amount)
    end
    award_points(g, cfg, recipient_app)
    if g.room then
      room_credit(g)
    end
  else
    redis.call('HINCRBY', K.bal(payer), kind, cost)
    release_quota(g, day)
    if payer ~= sender and redis.call('EXISTS', K.free(sender)) == 1 then
      redis.call('DECR', K.free(sender))
    end
  end
  redis.call('HSET', key, 'state', state, 'resolved_at_ms', NOW)
  redis.call('PEXPIRE', key, RETENTION)
  redis.call('ZREM', K.pending(), g.gift_id)
  redis.call('ZREM', K.inbox(recipient), g.gift_id)
  g.state = state
  g.resolved_at_ms = NOW
  emit(sender, 'outcome', g)
  emit(recipient, 'outcome', g)
  return g
end

-- Forget a node: its users' presence entries, its user set, its heartbeat.
local function drop_node(node)
  local users_key = K.node_users(node)
  for _, user in ipairs(redis.call('SMEMBERS', users_key)) do
    redis.call('HDEL', K.presence(user), node)
  end
  redis.call('DEL', users_key)
  -- and its live-room viewers: a user watching only through this node stops counting
  local rooms_key = K.node_rooms(node)
  for _, entry in ipairs(redis.call('SMEMBERS', rooms_key)) do
    local sep = string.find(entry, '|', 1, true)
    local room, user = string.sub(entry, 1, sep - 1), string.sub(entry, sep + 1)
    if redis.call('HDEL', K.room_conns(room), node .. '|' .. user) == 1
        and redis.call('HINCRBY', K.room_viewers(room), user, -1) <= 0 then
      redis.call('HDEL', K.room_viewers(room), user)
    end
  end
  redis.call('DEL', rooms_key)
  redis.call('ZREM', K.nodes(), node)
end

-- ---------------------------------------------------------------- script body follows

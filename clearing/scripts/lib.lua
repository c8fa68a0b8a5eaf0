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

-- The user's stream epoch, created when absent. A new epoch means the history was lost:
-- whatever stream is left belongs to the old one, and its entry ids would collide with
-- the restarted offsets, so it goes too.
local function ensure_epoch(user)
  local meta = K.evmeta(user)
  if redis.call('HSETNX', meta, 'epoch', EPOCH_CANDIDATE) == 1 then
    redis.call('HSET', meta, 'seq', 0)
    redis.call('DEL', K.events(user))
    return EPOCH_CANDIDATE
  end
  return redis.call('HGET', meta, 'epoch')
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

-- Move a pending gift (already validated as pending by the caller) to a final state:
--   accepted: held -> recipient's available `amount`, cost - amount -> consumed
--   declined / expired: held -> back to the sender, quota slots released
-- then stamp it, schedule its deletion after the retention window, drop it from the
-- queues, and tell both users. Returns the updated record.
local function finish(key, g, day, state)
  local sender, recipient, kind, cost = g.sender, g.recipient, g.kind, g.cost
  redis.call('HINCRBY', K.held(sender), kind, -cost)
  redis.call('HINCRBY', K.holds(), kind, -cost)
  if state == 'accepted' then
    redis.call('HINCRBY', K.bal(recipient), kind, g.amount)
    if cost > g.amount then
      redis.call('HINCRBY', K.consumed(), kind, cost - g.amount)
    end
  else
    redis.call('HINCRBY', K.bal(sender), kind, cost)
    release_quota(g, day)
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
  redis.call('ZREM', K.nodes(), node)
end

-- ---------------------------------------------------------------- script body follows

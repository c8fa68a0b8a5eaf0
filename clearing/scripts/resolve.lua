-- resolve.lua: the recipient accepts or declines a pending gift.
--
-- KEYS[1]  the gift hash ({p}:gift:<gift_id>)
-- ARGV[1..7] common header (lib.lua)
-- ARGV[8]  gift_id   ARGV[9]  by_user   ARGV[10] target state: "accepted" | "declined"
-- ARGV[11] the app the recipient answers from   ARGV[12] default scene settings (JSON)
-- ARGV[13] by_user's request rate: us per request, or '0' for no limit (lib.lua's
--          take_rate)   ARGV[14] its burst
-- ARGV[15] points_log_maxlen (entries the points log keeps; see lib.lua's plan_fold)
-- (an accept awards points with both users' app perks: see lib.lua's plan_points)
--
-- Returns msgpack {gift = record, changed = bool} or {err = code, gift = record?}:
--   RATE_LIMITED (by_user is over their rate; nothing else looked at or written);
--   GIFT_NOT_FOUND (also for a record that is not well_formed: nothing can act on it);
--   NOT_RECIPIENT (by_user is not the recipient);
--   pending, now < expires_at_ms  -> moved to the target state, changed = true
--   pending, now >= expires_at_ms -> expired right here (refund, slots back, events) and
--                                    {err = GIFT_EXPIRED, gift = the expired record}
--   already in the target state   -> changed = false (a retry of the call that did it)
--   expired                       -> GIFT_EXPIRED again, so a retry after the expiry
--                                    answers what the first try answered
--   the other final state         -> ALREADY_RESOLVED with the record
-- or a CORRUPT error when a ledger counter the move must change holds no whole number
-- (nothing is written).
--
-- Invariants kept: a gift leaves pending at most once (TigerBeetle's "a pending transfer
-- resolves at most once"); every read, check and computed value (points, perks, room
-- credit) comes from plan_finish() before finish(), the only writer.

local gift_key = KEYS[1]
local scenes = scene_reader()
local plan_finish, finish = gift_finisher(scenes)
local gift_id, by_user, target = ARGV[8], ARGV[9], ARGV[10]
local app, default_cfg = ARGV[11], ARGV[12]

if not take_rate(by_user, ARGV[13], ARGV[14]) then
  return refuse('RATE_LIMITED')
end

local flat = redis.call('HGETALL', gift_key)
local g, day, numbers_ok = gift_map(gift_id, flat)
if #flat == 0 or not well_formed(g, numbers_ok) then
  return refuse('GIFT_NOT_FOUND')
end
if by_user ~= g.recipient then
  return refuse('NOT_RECIPIENT')
end
if g.state == 'pending' then
  local state, scene = target, nil
  if NOW >= g.expires_at_ms then
    state = 'expired'
  elseif target == 'accepted' then
    scene = {doc = scenes.doc(default_cfg), defaults = default_cfg, app = app, log_maxlen = tonumber(ARGV[15])}
  end
  local plan, bad = plan_finish(g, day, state, scene)
  if not plan then
    return corrupt(bad)
  end
  -- ------------------------------------------------------------ writes
  if state == 'expired' then
    return refuse('GIFT_EXPIRED', finish(gift_key, plan))
  end
  return reply({gift = finish(gift_key, plan), changed = true})
end
if g.state == target then
  return reply({gift = g, changed = false})
end
if g.state == 'expired' then
  return refuse('GIFT_EXPIRED', g)
end
return refuse('ALREADY_RESOLVED', g)

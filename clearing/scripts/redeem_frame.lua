-- redeem_frame.lua: a user redeems the limited-time avatar frame of the running festival.
--
-- KEYS[1]  the user's inventory hash ({p}:inv:<user>, item -> expiry ms)
-- ARGV[1..7] common header (lib.lua)
-- ARGV[8]  user   ARGV[9] festival id   ARGV[10] default scene settings (JSON)
-- ARGV[11] the card kind the price is paid in
--
-- Rule: only while the festival's window holds NOW (start <= NOW < end), only a festival
-- that offers a frame, once per user and festival; the price (frame_price_units, may be
-- 0) moves from the user's balance to consumed. The item expires with the festival.
-- Returns msgpack {item, expires_at_ms} or {err = UNKNOWN_USER | NO_FESTIVAL |
-- ALREADY_REDEEMED | INSUFFICIENT_BALANCE}. A festival entry that is not as
-- clearing/scenes.py writes it is no festival (NO_FESTIVAL); a price setting that does not
-- read is the default's; a balance that holds no whole number stops it before any write
-- (CORRUPT).
-- Invariants kept: minted == available + holds + consumed (the price only changes place).

local user, festival_id, kind = ARGV[8], ARGV[9], ARGV[11]
if redis.call('EXISTS', key('user', user)) == 0 then
  return refuse('UNKNOWN_USER')
end
local scenes = scene_reader()
local f = scenes.festival_entry(redis.call('HGET', key('festivals'), festival_id))
if not f or not scenes.is_id(f.frame) or NOW < f.start_ms or NOW >= f.end_ms then
  return refuse('NO_FESTIVAL')
end
local item = 'frame:' .. festival_id
if redis.call('HEXISTS', KEYS[1], item) == 1 then
  return refuse('ALREADY_REDEEMED')
end
local price = scenes.values(scenes.doc(ARGV[10]), ARGV[10], 'frame_price_units')
local balance = whole(redis.call('HGET', key('bal', user), kind) or 0)
if not balance then
  return corrupt(key('bal', user))
end
if balance < price then
  return refuse('INSUFFICIENT_BALANCE')
end
local bad_counter, apply_moves = counter_mover()
local moves = {{key('bal', user), kind, -price, balance}, {key('consumed'), kind, price}}
local bad = price > 0 and bad_counter(moves)
if bad then
  return corrupt(bad)
end
-- ------------------------------------------------------------ writes
if price > 0 then
  apply_moves(moves)
end
redis.call('HSET', KEYS[1], item, f.end_ms)
return reply({item = item, frame = f.frame, expires_at_ms = f.end_ms})

-- bind_mentor.lua: bind an apprentice (a newcomer) to a mentor, once, rewarding both.
--
-- KEYS[1]  the bindings hash ({p}:mentors, apprentice -> mentor)
-- ARGV[1..7] common header (lib.lua)
-- ARGV[8]  apprentice   ARGV[9] mentor   ARGV[10] default scene settings (JSON)
-- ARGV[11] the card kind the rewards are paid in
--
-- Rules, in order: both users exist (UNKNOWN_USER); the apprentice has no mentor yet and
-- the mentor is not the apprentice's own apprentice (ALREADY_BOUND); the apprentice is
-- younger than newcomer_age_ms (NOT_NEWCOMER); the promotion account can pay both rewards
-- (PROMOTION_EXHAUSTED). Then the rewards move from the promotion account's balance to
-- both users: a transfer between ordinary accounts, so minted is unchanged.
-- Returns msgpack {mentor, apprentice, mentor_reward, apprentice_reward} or {err = code}.
-- An apprentice whose creation time holds no whole number is no newcomer; settings that do
-- not read are the defaults'; a promotion balance that holds no whole number cannot pay
-- (PROMOTION_EXHAUSTED); a balance to be credited that holds none stops it before any
-- write (CORRUPT).

local apprentice, mentor, kind = ARGV[8], ARGV[9], ARGV[11]
local created = redis.call('HGET', key('user', apprentice), 'created_at_ms')
if not created or redis.call('EXISTS', key('user', mentor)) == 0 then
  return refuse('UNKNOWN_USER')
end
if redis.call('HEXISTS', KEYS[1], apprentice) == 1 or redis.call('HGET', KEYS[1], mentor) == apprentice then
  return refuse('ALREADY_BOUND')
end
local scenes = scene_reader()
local newcomer_age, m, a, promo = scenes.values(scenes.doc(ARGV[10]), ARGV[10], 'newcomer_age_ms',
                                               'mentor_reward_units', 'apprentice_reward_units',
                                               'promo_account')
created = whole(created)
if not created or NOW - created >= newcomer_age then
  return refuse('NOT_NEWCOMER')
end
local bad_counter, apply_moves = counter_mover()
local moves = {{key('bal', promo), kind, -(m + a)}, {key('bal', mentor), kind, m},
               {key('bal', apprentice), kind, a}}
if m + a > 0 then
  if redis.call('EXISTS', key('user', promo)) == 0
      or (whole(redis.call('HGET', key('bal', promo), kind) or 0) or 0) < m + a then
    return refuse('PROMOTION_EXHAUSTED')
  end
  local bad = bad_counter(moves)
  if bad then
    return corrupt(bad)
  end
end
-- ------------------------------------------------------------ writes
if m + a > 0 then
  apply_moves(moves)
end
redis.call('HSET', KEYS[1], apprentice, mentor)
return reply({mentor = mentor, apprentice = apprentice, mentor_reward = m, apprentice_reward = a})

-- open_wish.lua: a streamer opens a gift wish in their live room (the room is named by the
-- streamer's user id), replacing any earlier wish; progress starts at 0.
--
-- KEYS[1]  the room hash ({p}:room:<streamer>)
-- ARGV[1..7] common header (lib.lua)
-- ARGV[8]  streamer   ARGV[9] card kind   ARGV[10] target count (> 0, checked by the caller)
--
-- Returns msgpack {version} or {err = UNKNOWN_USER}. The version is computed before the
-- write (a stored one that is no whole number counts as 0), so no HINCRBY can fail after
-- the wish was written.

local streamer = ARGV[8]
if redis.call('EXISTS', key('user', streamer)) == 0 then
  return refuse('UNKNOWN_USER')
end
local version = math.min((whole(redis.call('HGET', KEYS[1], 'version') or 0) or 0) + 1, MAX_SAFE)
redis.call('HSET', KEYS[1], 'streamer', streamer, 'wish_kind', ARGV[9], 'wish_target', ARGV[10],
           'wish_progress', 0, 'opened_at_ms', NOW, 'version', version)
return reply({version = version})

-- open_wish.lua: a streamer opens a gift wish in their live room (the room is named by the
-- streamer's user id), replacing any earlier wish; progress starts at 0.
--
-- KEYS[1]  the room hash ({p}:room:<streamer>)
-- ARGV[1..7] common header (lib.lua)
-- ARGV[8]  streamer   ARGV[9] card kind   ARGV[10] target count (> 0, checked by the caller)
--
-- Returns msgpack {version} or {err = UNKNOWN_USER}.

local streamer = ARGV[8]
if redis.call('EXISTS', key('user', streamer)) == 0 then
  return refuse('UNKNOWN_USER')
end
redis.call('HSET', KEYS[1], 'streamer', streamer, 'wish_kind', ARGV[9], 'wish_target', ARGV[10],
           'wish_progress', 0, 'opened_at_ms', NOW)
return reply({version = redis.call('HINCRBY', KEYS[1], 'version', 1)})

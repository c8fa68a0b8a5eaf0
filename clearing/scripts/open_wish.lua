-- open_wish.lua: a streamer opens a gift wish in their live room (the room is named by the
-- streamer's user id), replacing any earlier wish; progress starts at 0.
--
-- KEYS[1]  {streamer}:room
-- A        streamer, kind, target (> 0, checked by the caller)
-- Returns msgpack {version} or {err = UNKNOWN_USER}.

if redis.call('EXISTS', ukey(A.streamer, 'user')) == 0 then
  return refuse('UNKNOWN_USER')
end
if corrupt({{KEYS[1], 'version'}}) then
  return refuse('CORRUPT')
end
redis.call('HSET', KEYS[1], 'streamer', A.streamer, 'wish_kind', A.kind, 'wish_target', A.target,
           'wish_progress', 0, 'opened_at_ms', NOW)
return reply({version = redis.call('HINCRBY', KEYS[1], 'version', 1)})

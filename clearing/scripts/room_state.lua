-- room_state.lua: a live room as its viewers see it, read atomically.
--
-- KEYS[1]  the room hash ({p}:room:<room>)
-- ARGV[1..7] common header (lib.lua)
-- ARGV[8]  room   ARGV[9] user asking ("" for none)   ARGV[10] top N (>= 1)
--
-- Returns msgpack {viewers, version, streamer?, wish_kind?, wish_target?, wish_progress?,
-- top = [user, score, ...] (every member scoring at least the N-th score, so ties at the
-- cut are all there; at most N + 1000), score?, rank?}. Rank is competition ranking:
-- 1 + the number of users with strictly more points, so tied users share a rank.

local room, user, n = ARGV[8], ARGV[9], tonumber(ARGV[10])
local board = key('board', room)
local r = redis.call('HMGET', KEYS[1], 'streamer', 'wish_kind', 'wish_target', 'wish_progress', 'version')
-- A missing hash field is Lua's false, which msgpack would carry as False: "or nil" leaves
-- the key out instead, so a room with no wish has no wish fields.
-- A number that is no whole number reads as absent (the version as 0).
local out = {viewers = redis.call('HLEN', key('roomviewers', room)), version = whole(r[5] or 0) or 0,
             streamer = r[1] or nil, wish_kind = r[2] or nil, wish_target = whole(r[3]), wish_progress = whole(r[4])}
local top = {}
local nth = redis.call('ZREVRANGE', board, n - 1, n - 1, 'WITHSCORES')
if #nth > 0 then
  top = redis.call('ZREVRANGEBYSCORE', board, '+inf', nth[2], 'WITHSCORES', 'LIMIT', 0, n + 1000)
else
  top = redis.call('ZREVRANGE', board, 0, -1, 'WITHSCORES')
end
out.top = top
if user ~= '' then
  local score = redis.call('ZSCORE', board, user)
  if score then
    out.score = tonumber(score)
    out.rank = redis.call('ZCOUNT', board, '(' .. score, '+inf') + 1
  end
end
return reply(out)

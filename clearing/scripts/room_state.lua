-- room_state.lua (read only): a live room as its viewers see it, read atomically.
--
-- KEYS[1]  {room}:room
-- A        room, user (asking, or nil), top (N >= 1)
-- Returns msgpack {viewers, version, streamer?, wish_kind?, wish_target?, wish_progress?,
-- top = [user, score, ...] (every member scoring at least the N-th score, so ties at the
-- cut are all there; at most N + 1000), score?, rank?}. Rank is competition ranking:
-- 1 + the number of users with strictly more points, so tied users share a rank.

local board = ukey(A.room, 'board')
local r = redis.call('HMGET', KEYS[1], 'streamer', 'wish_kind', 'wish_target', 'wish_progress', 'version')
-- A missing hash field is Lua's false, which msgpack would carry as False: "or nil" leaves
-- the key out instead, so a room with no wish has no wish fields.
local out = {viewers = redis.call('HLEN', ukey(A.room, 'roomviewers')), version = num(r[5]),
             streamer = r[1] or nil, wish_kind = r[2] or nil, wish_target = r[3] and tonumber(r[3]) or nil,
             wish_progress = r[4] and tonumber(r[4]) or nil}
local nth = redis.call('ZREVRANGE', board, A.top - 1, A.top - 1, 'WITHSCORES')
if #nth > 0 then
  out.top = redis.call('ZREVRANGEBYSCORE', board, '+inf', nth[2], 'WITHSCORES', 'LIMIT', 0, A.top + 1000)
else
  out.top = redis.call('ZREVRANGE', board, 0, -1, 'WITHSCORES')
end
if A.user then
  local score = redis.call('ZSCORE', board, A.user)
  if score then
    out.score = tonumber(score)
    out.rank = redis.call('ZCOUNT', board, '(' .. score, '+inf') + 1
  end
end
return reply(out)

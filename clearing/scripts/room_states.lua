#!lua flags=no-writes,allow-cross-slot-keys
-- room_states.lua (read only): the live rooms of a node's push tick on one Redis node, in one
-- call (clearing/rooms.py groups the rooms by node, at most 64 a call).
--
-- KEYS[1]  the first room's hash (routes the call)
-- A        top (N >= 1), rooms ({room, version, viewers} of each room's last push, -1 for none)
--
-- Returns msgpack {rooms = [state, ...]}: for each room whose version or viewer count
-- differs from its mark, in A.rooms order, {room, viewers, version, streamer?, wish_kind?,
-- wish_target?, wish_progress?, top} as room_state.lua answers (without the asking user's
-- rank). One script per tick per node whatever the number of rooms: one per room ran as many
-- scripts one after another every tick. An unchanged room costs an HMGET and an HLEN.

local n = A.top
local out = {}
for _, mark in ipairs(A.rooms) do
  local room = mark[1]
  local r = redis.call('HMGET', ukey(room, 'room'), 'version', 'streamer', 'wish_kind', 'wish_target',
                       'wish_progress')
  local version = num(r[1])
  local viewers = redis.call('HLEN', ukey(room, 'roomviewers'))
  if version ~= mark[2] or viewers ~= mark[3] then
    -- A missing hash field is Lua's false: "or nil" leaves the key out (see room_state.lua).
    local state = {room = room, viewers = viewers, version = version, streamer = r[2] or nil,
                   wish_kind = r[3] or nil, wish_target = r[4] and tonumber(r[4]) or nil,
                   wish_progress = r[5] and tonumber(r[5]) or nil}
    local board = ukey(room, 'board')
    local nth = redis.call('ZREVRANGE', board, n - 1, n - 1, 'WITHSCORES')
    if #nth > 0 then
      state.top = redis.call('ZREVRANGEBYSCORE', board, '+inf', nth[2], 'WITHSCORES', 'LIMIT', 0, n + 1000)
    else
      state.top = redis.call('ZREVRANGE', board, 0, -1, 'WITHSCORES')
    end
    out[#out + 1] = state
  end
end
return reply({rooms = out})

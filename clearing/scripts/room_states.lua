-- room_states.lua (read only): the live rooms of a node's push tick, all in one call.
--
-- KEYS[1]  the node's room entries ({p}:noderooms:<node>; not read, it names the slot)
-- ARGV[1..7] common header (lib.lua)
-- ARGV[8]  top N (>= 1)
-- ARGV[9..] triples: room, version and viewers of the room's last push ('-1' for none)
--
-- Returns msgpack {rooms = [state, ...]}: for each room whose version or viewer count
-- differs from its triple, in ARGV order, {room, viewers, version, streamer?, wish_kind?,
-- wish_target?, wish_progress?, top} as room_state.lua answers (without the asking
-- user's rank). One script per tick whatever the number of rooms: one per room ran as many
-- scripts one after another every tick. An unchanged room costs an HMGET and an HLEN.

local n = tonumber(ARGV[8])
local out = {}
for i = 9, #ARGV, 3 do
  local room = ARGV[i]
  local r = redis.call('HMGET', key('room', room), 'version', 'streamer', 'wish_kind', 'wish_target',
                       'wish_progress')
  local version = tonumber(r[1] or '0')
  local viewers = redis.call('HLEN', key('roomviewers', room))
  if version ~= tonumber(ARGV[i + 1]) or viewers ~= tonumber(ARGV[i + 2]) then
    -- A missing hash field is Lua's false: "or nil" leaves the key out (see room_state.lua).
    local state = {room = room, viewers = viewers, version = version, streamer = r[2] or nil,
                   wish_kind = r[3] or nil, wish_target = r[4] and tonumber(r[4]) or nil,
                   wish_progress = r[5] and tonumber(r[5]) or nil}
    local board = key('board', room)
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

-- quote.lua (read only): price a gift to a streamer in their live room.
--
-- KEYS[1]  {room}:room
-- A        room, sender, base (qty * units_per_card), festival_permille (1000 when no
--          festival), tiers ({{min_viewers, permille}, ...} ascending, permille never
--          decreasing: the price is monotone in the viewer count)
--
-- cost = ceil(ceil(base * festival_permille / 1000) * tier_permille / 1000), each step rounded
-- up to a whole minor unit. The recipient will be credited base; the rest is consumed on
-- accept. The caller keeps the quote with the sender (clearing/rooms.py), where reserve uses
-- it up. Refusals: NO_WISH (the room has no open wish), NOT_IN_ROOM (the sender is not
-- watching). Returns msgpack {cost, viewers, permille}.

if redis.call('HGET', KEYS[1], 'streamer') ~= A.room then
  return refuse('NO_WISH')
end
if redis.call('HEXISTS', ukey(A.room, 'roomviewers'), A.sender) == 0 then
  return refuse('NOT_IN_ROOM')
end
local viewers = redis.call('HLEN', ukey(A.room, 'roomviewers'))
local permille = 1000
for _, tier in ipairs(A.tiers) do
  if tier[1] <= viewers then
    permille = tier[2]
  end
end
local cost = math.floor((A.base * A.festival_permille + 999) / 1000)
cost = math.floor((cost * permille + 999) / 1000)
return reply({cost = cost, viewers = viewers, permille = permille})

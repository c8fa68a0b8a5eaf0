-- quote.lua: price a gift to a streamer in their live room, and honour it for a while.
--
-- KEYS[1]  the quote hash ({p}:quote:<quote_id>)
-- ARGV[1..7] common header (lib.lua)
-- ARGV[8]  quote_id   ARGV[9] sender   ARGV[10] room (= the streamer, the recipient)
-- ARGV[11] kind   ARGV[12] qty   ARGV[13] base price (qty * units_per_card)
-- ARGV[14] default scene settings (JSON)
--
-- Price: the room's viewer count picks the last tier of cfg.live_tiers whose min_viewers
-- <= viewers (ascending, permille never decreasing: monotone in the viewer count); then
-- cost = ceil(ceil(base * festival_permille / 1000) * tier_permille / 1000), each step
-- rounded up to a whole minor unit. The recipient will be credited base; the rest is
-- consumed on accept. The quote holds for quote_ttl_ms (reserve.lua compares NOW with
-- expires_at_ms; the key itself lingers a minute longer only to answer QUOTE_EXPIRED
-- rather than nothing, then Redis drops it).
-- Refusals: NO_WISH (the room has no open wish), NOT_IN_ROOM (the sender is not watching),
-- BAD_QUANTITY (a cost beyond 2^53 - 1 units, which no balance can pay). Tiers and the TTL
-- that do not read as clearing/scene_config.py accepts them are the defaults' (lib.lua
-- scene_reader: tiers, values); a festival that does not read prices nothing.
-- Returns msgpack {quote_id, room, cost, amount, viewers, permille, expires_at_ms}.

local quote_id, sender, room, kind = ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local qty, base = tonumber(ARGV[12]), tonumber(ARGV[13])
if redis.call('HGET', key('room', room), 'streamer') ~= room then
  return refuse('NO_WISH')
end
if redis.call('HEXISTS', key('roomviewers', room), sender) == 0 then
  return refuse('NOT_IN_ROOM')
end
local scenes = scene_reader()
local doc = scenes.doc(ARGV[14])
local ttl = scenes.values(doc, ARGV[14], 'quote_ttl_ms')
local viewers = redis.call('HLEN', key('roomviewers', room))
local permille = 1000
for _, tier in ipairs(scenes.tiers(doc, ARGV[14])) do
  if tier.min_viewers <= viewers then
    permille = tier.permille
  end
end
local festival, festival_permille = scenes.festival()
local cost = base
if festival then
  cost = scenes.per_mille(cost, festival_permille, true)
end
cost = scenes.per_mille(cost, permille, true)
if cost > MAX_SAFE then
  return refuse('BAD_QUANTITY')
end
local expires = NOW + ttl
-- ------------------------------------------------------------ writes
redis.call('HSET', KEYS[1], 'sender', sender, 'recipient', room, 'room', room, 'kind', kind,
           'qty', qty, 'cost', cost, 'amount', base, 'expires_at_ms', expires)
redis.call('PEXPIRE', KEYS[1], ttl + 60000)
return reply({quote_id = quote_id, room = room, cost = cost, amount = base, viewers = viewers,
              permille = permille, expires_at_ms = expires})

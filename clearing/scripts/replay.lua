-- replay.lua: what a reconnecting client missed in its event stream.
--
-- KEYS[1]  the user's event meta hash ({p}:evmeta:<user>: epoch, seq)
-- ARGV[1..7] common header (lib.lua); ARGV[3] is the epoch to create if none exists
-- ARGV[8]  user
-- ARGV[9]  the client's epoch, or "" when it does not ask to resume
-- ARGV[10] the last offset the client processed, or "" (read as 0)
-- ARGV[11] at most this many events (a page; the caller asks again after the last one), or
--          "" for all of them
--
-- Returns msgpack {ep = epoch, head = newest offset, recovered = bool,
--                  events = [event map as published, ...]}:
--   no client epoch        -> no events, recovered = true (nothing to recover)
--   another epoch, or an offset beyond the head (the client's history is not ours)
--                          -> every retained event, recovered = false
--   same epoch             -> events with offset > after; recovered = false when the
--                             oldest retained offset is past after + 1 (a trimmed gap)
-- The epoch is created here when absent so a first connection gets a real one.

local user, client_epoch = ARGV[8], ARGV[9]
local after = tonumber(ARGV[10]) or 0
local epoch = ensure_epoch(user)
local head = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
if client_epoch == '' then
  return reply({ep = epoch, head = head, recovered = true, events = {}})
end

local stream = key('ev', user)
local from, recovered = '-', false
if client_epoch == epoch and after <= head then
  local oldest = head + 1
  local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
  if first then
    oldest = tonumber(string.match(first[1], '^(%d+)'))
  end
  recovered = oldest <= after + 1
  from = '(' .. ARGV[10] .. '-0'
  if ARGV[10] == '' then
    from = '-'
  end
end
local range = {'XRANGE', stream, from, '+'}
if ARGV[11] ~= '' then
  range[5], range[6] = 'COUNT', ARGV[11]
end
local events = {}
for i, entry in ipairs(redis.call(unpack(range))) do
  -- entry = {id, {'p', payload}}; unpacked so the reply is one msgpack document rather
  -- than msgpack nested as an opaque string
  events[i] = cmsgpack.unpack(entry[2][2])
end
return reply({ep = epoch, head = head, recovered = recovered, events = events})

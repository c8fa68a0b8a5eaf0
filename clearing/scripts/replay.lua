-- replay.lua: what a reconnecting client missed, read atomically (clearing/events.py).
--
-- KEYS[1]  {U}:evmeta
-- A        u, epoch (the client's, or nil: no resume), after (offset, or nil), limit (at most
--          this many events: a page, the caller asks again after the last one; nil: all),
--          ep (a fresh epoch in case the user has none)
-- Returns msgpack {ep, head, recovered, events = [event maps]}.

local epoch = ensure_epoch(A.u)
local head = num(redis.call('HGET', KEYS[1], 'seq'))
if A.epoch == nil then
  return reply({ep = epoch, head = head, recovered = true, events = {}})
end

local stream = ukey(A.u, 'ev')
local after = A.after or 0
local from, recovered = '-', false
if A.epoch == epoch and after <= head then
  local oldest = head + 1
  local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
  if first then
    oldest = tonumber(string.match(first[1], '^(%d+)'))
  end
  recovered = oldest <= after + 1
  if A.after then
    from = '(' .. string.format('%d', after) .. '-0'
  end
end
local events = {}
local range = {'XRANGE', stream, from, '+'}
if A.limit then
  range[5], range[6] = 'COUNT', A.limit
end
for i, entry in ipairs(redis.call(unpack(range))) do
  -- entry = {id, {'p', payload}}; unpacked so the reply is one msgpack document rather than
  -- msgpack nested as an opaque string
  events[i] = cmsgpack.unpack(entry[2][2])
end
return reply({ep = epoch, head = head, recovered = recovered, events = events})

#!lua flags=no-writes,allow-cross-slot-keys
-- gauges.lua (read only): what some slots of one Redis node hold pending, for the metrics:
-- offers waiting for an answer, and the units held per card kind.
--
-- KEYS[1]  the first slot's totals (routes the call)
-- A        tags (the slots' tags)
-- Returns msgpack {pending = n, held = {kind = units, ...}}.

local pending, held = 0, {}
for _, tag in ipairs(A.tags) do
  pending = pending + redis.call('ZCARD', tkey(tag, 'expiry'))
  local flat = redis.call('HGETALL', tkey(tag, 'tot'))
  for i = 1, #flat, 2 do
    local kind = string.match(flat[i], '^holds:(.+)$')
    if kind then
      held[kind] = (held[kind] or 0) + num(flat[i + 1])
    end
  end
end
return reply({pending = pending, held = held})

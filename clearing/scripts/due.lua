#!lua flags=allow-cross-slot-keys
-- due.lua: what is due in some slots: offers past their expiry and saga steps past their
-- deadline. One call reads many slots of one Redis node (the sweeper groups its slots by
-- node); a slot that moved away makes the call fail before it writes anything, and the
-- sweeper asks again with a fresh map.
--
-- It also keeps this node's sweep index (lib.lua index_due) true for the slots it reads:
-- each slot's entry becomes the earliest time left in its two queues (the entries returned
-- are still there, so a slot whose work fails stays due), or goes when both are empty.
-- The only write, and a hint: the full sweep rebuilds what a resharding or a lost write
-- left out.
--
-- KEYS[1]  the first slot's expiry queue (routes the call)
-- A        tags (the slots' tags), limit (entries per queue)
-- Returns msgpack {expired = {'<recipient>|<gift>', ...}, due = {'<step>|<user>|<id>', ...}}.

local expired, due, next_at = {}, {}, {}
local function first_at(key)
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return first[2] and tonumber(first[2])
end
for i, tag in ipairs(A.tags) do
  local expiry_key, due_key = tkey(tag, 'expiry'), tkey(tag, 'due')
  for _, entry in ipairs(redis.call('ZRANGEBYSCORE', expiry_key, '-inf', NOW, 'LIMIT', 0, A.limit)) do
    expired[#expired + 1] = entry
  end
  for _, entry in ipairs(redis.call('ZRANGEBYSCORE', due_key, '-inf', NOW, 'LIMIT', 0, A.limit)) do
    due[#due + 1] = entry
  end
  local e, d = first_at(expiry_key), first_at(due_key)
  next_at[i] = (e and d and math.min(e, d)) or e or d or false
end
-- every read done: now the index
if sweep_indexed() then
  local index = tkey(HOME, 'sweepidx')
  for i, tag in ipairs(A.tags) do
    if next_at[i] then
      redis.call('ZADD', index, next_at[i], tag)
    else
      redis.call('ZREM', index, tag)
    end
  end
end
return reply({expired = expired, due = due})

#!lua flags=no-writes,allow-cross-slot-keys
-- due.lua (read only): what is due in some slots: offers past their expiry and saga steps
-- past their deadline. One call reads many slots of one Redis node (the sweeper groups its
-- slots by node); a slot that moved away makes the call fail before it reads anything, and
-- the sweeper asks again with a fresh map.
--
-- KEYS[1]  the first slot's expiry queue (routes the call)
-- A        tags (the slots' tags), limit (entries per queue)
-- Returns msgpack {expired = {'<recipient>|<gift>', ...}, due = {'<step>|<user>|<id>', ...}}.

local expired, due = {}, {}
for _, tag in ipairs(A.tags) do
  for _, entry in ipairs(redis.call('ZRANGEBYSCORE', tkey(tag, 'expiry'), '-inf', NOW, 'LIMIT', 0, A.limit)) do
    expired[#expired + 1] = entry
  end
  for _, entry in ipairs(redis.call('ZRANGEBYSCORE', tkey(tag, 'due'), '-inf', NOW, 'LIMIT', 0, A.limit)) do
    due[#due + 1] = entry
  end
end
return reply({expired = expired, due = due})

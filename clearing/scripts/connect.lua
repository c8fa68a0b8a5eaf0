-- connect.lua: one more connection of a user on a gateway node.
--
-- KEYS[1]  the user's presence hash ({p}:presence:<user>, node -> connection count)
-- ARGV[1..7] common header (lib.lua)
-- ARGV[8]  user   ARGV[9] node
-- ARGV[10] the most connections the user may hold over all live nodes; 0: no cap (a node
--          announcing again the connections it already holds, after it was reaped)
--
-- Returns msgpack {count = the user's connections on that node}, or {err =
-- TOO_MANY_CONNECTIONS} with nothing written when the user already holds the cap. Counts
-- of nodes that stopped beating are not counted: their connections are gone.
-- Or {err = ACCOUNT_BANNED}, nothing written, when the user's account is banned. The check
-- and the count are one step: a ban set later finds this node in the presence hash
-- (set_flags.lua tells it).
-- Invariants kept: a node with a count > 0 in a presence hash has the user in its
-- nodeusers set, so dropping a dead node finds every entry it left behind. The count is
-- computed before the first write (one that is no whole number, or below 0, counts as 0).

local user, node, cap = ARGV[8], ARGV[9], tonumber(ARGV[10] or '0')
if redis.call('HGET', key('user', user), 'banned') == '1' then
  return refuse('ACCOUNT_BANNED')
end
if cap > 0 then
  local flat = redis.call('HGETALL', KEYS[1])
  local names, counts = {}, {}
  for i = 1, #flat, 2 do
    local n = #names + 1
    names[n], counts[n] = flat[i], math.max(whole(flat[i + 1]) or 0, 0)
  end
  if #names > 0 then
    local total, cutoff = 0, NOW - tonumber(NODE_TTL)
    -- a node that is not registered scores nil, which Lua sees as false
    for i, beat in ipairs(redis.call('ZMSCORE', key('nodes'), unpack(names))) do
      if beat and tonumber(beat) > cutoff then
        total = total + counts[i]
      end
    end
    if total >= cap then
      return refuse('TOO_MANY_CONNECTIONS')
    end
  end
end
local count = math.max(whole(redis.call('HGET', KEYS[1], node) or 0) or 0, 0) + 1
redis.call('HSET', KEYS[1], node, count)
redis.call('SADD', key('nodeusers', node), user)
return reply({count = count})

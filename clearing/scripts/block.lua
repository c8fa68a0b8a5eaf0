-- block.lua: block or unblock a user (either direction forbids gifts between the two).
--
-- KEYS[1]  the blocker's block set ({p}:blocks:<blocker>)
-- ARGV[1..7] common header (lib.lua)
-- ARGV[8]  blocker   ARGV[9] blocked   ARGV[10] "block" | "unblock"
--
-- Returns msgpack {} or {err = UNKNOWN_USER}. Idempotent both ways. Gifts already pending
-- between the two are not cancelled: the block only stops new ones (reserve.lua reads it).

local blocker, blocked, action = ARGV[8], ARGV[9], ARGV[10]
if redis.call('EXISTS', key('user', blocker)) == 0 or redis.call('EXISTS', key('user', blocked)) == 0 then
  return refuse('UNKNOWN_USER')
end
if action == 'block' then
  redis.call('SADD', KEYS[1], blocked)
else
  redis.call('SREM', KEYS[1], blocked)
end
return reply({})

-- probe.lua: recovery, on the sender's slot: did a send that stopped half-way get its send
-- half? If not, a `void` tombstone takes the gift id (for memo_ms), so that the reserve of a
-- late retry is refused SEND_ABORTED rather than holding cards for an offer that is voided.
--
-- KEYS[1]  {S}:user
-- A        gid, s, r, kind, qty, memo_ms
-- Returns msgpack {send = the send half} (void included) or {refused = code} (the sender
-- was refused; the admission goes with that code).

local flat = redis.call('HGETALL', send_key())
if #flat > 0 then
  return reply({send = record(A.gid, flat)})
end
local code = redis.call('HGET', ukey(A.s, 'refused:' .. A.gid), 'code')
if code then
  return reply({refused = code})
end
local key = send_key()
redis.call('HSET', key, 'state', 'void', 'why', 'SEND_ABORTED', 'sender', A.s, 'recipient', A.r,
           'kind', A.kind, 'qty', A.qty)
redis.call('PEXPIRE', key, A.memo_ms)
return reply({send = {state = 'void', why = 'SEND_ABORTED'}})

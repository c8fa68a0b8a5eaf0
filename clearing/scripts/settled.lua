-- settled.lua: after settle@S of a gift answered at R (answer.lua), on R's slot: the offer
-- half's retention starts (it had none while recovery might need it to settle S's hold),
-- its `owed` marker goes and its `answered|R|id` entry leaves R's due queue, all or none
-- (gift_answer.lua apply_finished). A repeat changes nothing more; lost to a crash, the
-- entry stays for recovery, which settles again (no change) and runs this again.
--
-- KEYS[1]  {R}:user
-- A        gid, r, rtag, retention
-- Returns msgpack {} or {err = NOT_DUE} (the offer half is not final: answer@R has not run,
-- or it kept the three-step path; nothing written).

-- A half that is gone (erased) leaves only the entry to drop; one that is there must be final.
local half = redis.call('HMGET', offer_key(A.r), 'state', 'closed')
if half[1] and half[2] ~= '1' then
  return refuse('NOT_DUE')
end
apply_finished({recipient = A.r, rtag = A.rtag})
return reply({})

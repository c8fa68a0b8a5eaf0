-- mentor_step.lua: one step of a mentor binding across shards (mentor.lua), by A.step:
--   'check'  on M: the mentor's side, read only                -> {code}
--   'bind'   on A: A's rules with M's code (A.mcode); `paying` -> {err} or {state}
--   'pay'    on P: both rewards into transit, once              -> {err} or {paid}
--   'credit' on M: the mentor's reward, once                    -> {}
--   'finish' on A: the apprentice's reward, `bound`, not due    -> {}
--   'undo'   on A: the promotion could not pay: no binding      -> {}
--   'state'  on A: where a binding stands (recovery)            -> {state, mentor, mreward, areward}
--
-- KEYS[1]  a key of the slot the step runs on

local step = A.step
if step == 'check' then
  return reply({code = check_mentor_side()})
elseif step == 'bind' then
  local state = redis.call('HGET', ukey(A.a, 'user'), 'mentor_state')
  if state == 'paying' and redis.call('HGET', ukey(A.a, 'user'), 'mentor') == A.m then
    return reply({state = state})  -- a retry of this binding
  end
  local code = check_apprentice_side(A.mcode)
  if code then
    return refuse(code)
  end
  apply_bind(true)
  return reply({state = 'paying'})
elseif step == 'pay' then
  local pay = check_pay()
  if pay ~= 'ok' and pay ~= 'paid' then
    return refuse(pay)
  end
  if pay == 'ok' then
    apply_pay()
  end
  return reply({paid = true})
elseif step == 'credit' then
  if not creditable(A.m, A.mtag) then
    return refuse('CORRUPT')
  end
  apply_credit(A.m, A.mtag, A.mreward)
  return reply({})
elseif step == 'finish' then
  if not creditable(A.a, A.atag) then
    return refuse('CORRUPT')
  end
  apply_credit(A.a, A.atag, A.areward)
  apply_finish()
  return reply({})
elseif step == 'undo' then
  if redis.call('HGET', ukey(A.a, 'user'), 'mentor_state') == 'paying' then
    apply_unbind()
  end
  return reply({})
elseif step == 'state' then
  local a = redis.call('HMGET', ukey(A.a, 'user'), 'mentor_state', 'mentor', 'mentor_m', 'mentor_a')
  return reply({state = a[1] or nil, mentor = a[2] or nil, mreward = num(a[3]), areward = num(a[4])})
end
return refuse('BAD_REQUEST')

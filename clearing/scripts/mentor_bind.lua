#!lua flags=allow-cross-slot-keys
-- mentor_bind.lua: a mentor binding in one script, the fast path (apprentice, mentor and
-- promotion account on one Redis node). See mentor.lua for the rules.
--
-- KEYS[1]  {A}:user
-- Returns msgpack {bound = true} or {err}.

local code = check_apprentice_side(check_mentor_side())
if code == nil then
  local pay = check_pay()
  if pay ~= 'ok' and pay ~= 'paid' then
    code = pay
  end
end
if code == nil and not (creditable(A.m, A.mtag) and creditable(A.a, A.atag)) then
  code = 'CORRUPT'
end
if code then
  return refuse(code)
end
apply_bind(false)
apply_pay()
apply_credit(A.m, A.mtag, A.mreward)
apply_credit(A.a, A.atag, A.areward)
apply_finish()
return reply({bound = true})

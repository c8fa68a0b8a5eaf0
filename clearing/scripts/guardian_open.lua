-- guardian_open.lua (read only): a page of the guardian's open requests (guardian_ask.lua),
-- those still inside the guardian's window, soonest end first; ties in member order, which
-- is the sorted set's own order, so a cursor (the last request's end and member) resumes
-- exactly after it even when requests were answered between two pages.
--
-- KEYS[1]  {G}:user
-- A        g, after_ms, after (the cursor's member; '' for the first page), limit
-- Returns msgpack {gifts = [gift maps], more = bool}.

local open = ukey(A.g, 'gopen')
local from = math.max(tonumber(A.after_ms) or 0, NOW + 1)
local gifts, offset, batch, more = {}, 0, A.limit + 1, false
while not more do
  local rows = redis.call('ZRANGEBYSCORE', open, string.format('%d', from), '+inf', 'WITHSCORES', 'LIMIT', offset, batch)
  if #rows == 0 then
    break
  end
  for i = 1, #rows, 2 do
    local member, score = rows[i], tonumber(rows[i + 1])
    if score > from or tonumber(A.after_ms) ~= from or member > A.after then
      local raw = redis.call('GET', ukey(A.g, 'greq:' .. member))
      if raw then
        if #gifts == A.limit then
          more = true
          break
        end
        gifts[#gifts + 1] = cmsgpack.unpack(raw)
      end
    end
  end
  offset = offset + batch
end
return reply({gifts = gifts, more = more})

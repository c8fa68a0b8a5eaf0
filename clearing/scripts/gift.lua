-- gift.lua: what the steps of a gift share, prepended (after lib.lua) to the scripts that
-- move gifts, before the steps they need: gift_send.lua (admit, reserve, sponsor, void,
-- offer) or gift_answer.lua (decide, settle, lucky, close). Split so that a script does not build,
-- on every call, the functions of steps it never runs.
--
-- A gift has two halves (clearing/keys.py): the send half with the sender S
-- ({S}:gift:<id>: idempotency, the hold when S pays, S's counter) and the offer half with the
-- recipient R ({R}:offer:<id>: the decision, the window, R's counters, the credit). A newcomer's
-- free gift has a third part with its payer P, the promotion account ({P}:sponsor:<S>|<id>: the
-- hold). Each step is a check_* function (reads, decides, computes) and an apply_* function
-- (writes only, nothing there can fail). A step script runs one check and its apply; a
-- fast-path script (every part on one Redis node) runs all checks first, then all applies,
-- which is one atomic gift exactly as if there were no sagas.
--
-- Arguments (A), as clearing/gifts.py sends them:
--   gid, s, r, kind, qty, day, app; stag, rtag, ptag: slot tags of S, R and P
--   base: qty * units_per_card (what R is credited); cost: base priced by the festival
--   festival: its id, or nil; quote: a quote id, or nil; window: confirm window ms
--   send_limit, vip_bonus, recv_limit, scope ('recipient'|'pair'), follow_age: the rules
--   promo, nc_age, nc_free: the promotion account (nil: no newcomer gifts), newcomer rules
--   pre: a refusal Python found without Redis (SELF_GIFT...), raised after idempotency
--   memo_ms: how long a refused gift id stays spent; retention: how long a resolved gift
--   is kept; saga_ms: how long a step may stay unfinished before recovery takes it over
--   perks: {per_card, apps = {app = {sender_bonus, recipient_mult, joint}}}
--   dead, ep, maxlen, quota_ttl, pointlog_max: see lib.lua
--   guard: {region = {rule, window ms}} for the regions whose guardian rule is on, or nil;
--   rguard: the recipient side's guardian verdict (admit's reply) for a saga's reserve
--   dev: the sender's device fingerprint, or nil; rl_daily, rl_rooms: what a user of the
--   risk engine's limited tier may still do (gifts a day; 1: live-room gifts allowed)
--   consent: {region = consent version} for the regions that require consent, or nil

--   camp: a brand campaign's id, or nil (clearing/campaigns.py): the gift is issued by the
--   brand to a recipient chosen by the campaign, not sent between friends; see gift_send.lua

local SEND_FIELDS = {'sender', 'recipient', 'kind', 'qty', 'cost', 'amount', 'state', 'created_at_ms',
                     'expires_at_ms', 'day', 'app', 'payer', 'festival', 'room', 'stag', 'rtag', 'ptag',
                     'guardian', 'gwin', 'camp'}
-- Guardian confirmation (docs/regions.md): gneed ('any' | 'male': the sender's gender the rule
-- asks for), gcand (the ward's guardian, '' for none) and gwin (the guardian's window) as admit
-- found them; guardian, only on a gift that waits (or waited) for them; rwin, the recipient's
-- window once approved; gdone, the guardian's answer ('approved' | 'rejected').
local OFFER_FIELDS = {'sender', 'recipient', 'kind', 'qty', 'cost', 'amount', 'state', 'created_at_ms',
                      'expires_at_ms', 'day', 'app', 'payer', 'festival', 'room', 'stag', 'rtag', 'ptag',
                      'gneed', 'gcand', 'gwin', 'guardian', 'rwin', 'gdone', 'skin', 'camp'}

local function send_key()
  return ukey(A.s, 'gift:' .. A.gid)
end
local function offer_key(r)
  return ukey(r or A.r, 'offer:' .. A.gid)
end
local function sponsor_key(p, s)
  return ukey(p, 'sponsor:' .. s .. '|' .. A.gid)
end
local function recv_counters(day, r, s)
  return ukey(r, 'q:recv:' .. day), ukey(r, 'q:recvp:' .. day .. ':' .. s)
end
-- R's two receive counters of a gift, as corrupt() takes them.
local function slot_counters(g)
  local recv, pair = recv_counters(g.day, g.recipient, g.sender)
  return {{recv}, {pair}}
end

-- A gift half whose numbers read (a hand edit could leave one that does not).
local function well_formed(g)
  return g.qty and g.cost and g.amount and g.created_at_ms and g.expires_at_ms and g.sender and g.recipient
    and g.kind and g.day and true or false
end

-- The counters a payer's settle may change, as corrupt() takes them.
local function money_counters(user, tag, kind)
  return {{ukey(user, 'bal'), kind}, {ukey(user, 'held'), kind},
          {tkey(tag, 'tot'), 'holds:' .. kind, 'consumed:' .. kind, 'transit:' .. kind}}
end

-- The risk engine's verdict on a user ({U}:risk, written by risk/actions.py), read in the same
-- step as the user's other rules: frozen_until (ms; nil when not frozen, -1 when frozen with an
-- end that does not read: a hand edit must not thaw an account), limited (the low tier's
-- behaviour limits), whether the device `dev` (copied there at hello and when the device is
-- banned, so no other slot is read) is banned, and whether the account is banned (the top
-- tier: gifts refused as for a banned account, while the user may still connect to appeal).
local function risk_of(user, dev)
  local r = redis.call('HMGET', ukey(user, 'risk'), 'frozen_until', 'limited', 'dev:' .. (dev or ''), 'banned')
  local frozen
  if r[1] then
    local u = whole(r[1])
    if u == nil then
      frozen = -1
    elseif u > NOW then
      frozen = u
    end
  end
  return frozen, r[2] == '1', dev ~= nil and r[3] == '1', r[4] == '1'
end

-- GDPR data-processing consent (docs/regions.md): A.consent maps each region whose rule is
-- on to the consent text version its users must have agreed to (nil: no region has the
-- rule). True when `user` is in such a region and has no consent to exactly that version on
-- record (none, withdrawn, or an older text): such a user may not send, receive or accept.
-- An account without a region is in 'global' (clearing/regions.py DEFAULT_REGION).
local function lacks_consent(user)
  if A.consent == nil then
    return false
  end
  local u = account(user, AC_CONSENT)
  local needed = A.consent[u[AC_REGION] or 'global']
  return needed ~= nil and u[AC_CONSENT] ~= needed
end

local function same_gift(g)
  return g.sender == A.s and g.recipient == A.r and g.kind == A.kind and g.qty == A.qty
end

-- Admits one request against every limit that applies, atomically, on Redis' own clock:
-- GCRA limits (requests and tokens of the key, the model, the route, the address), the key's
-- requests in flight (leases that expire), and its budget (spent + reserved, reservations are
-- leases too). Either everything is taken or nothing is.
--
-- KEYS: the n limit keys, then the concurrency set (if ARGV[2] > 0), then the budget hash and
-- its reservation set (if ARGV[3] >= 0).
-- ARGV: n, concurrency max, budget limit (-1: none), estimate, spent baseline, budget key TTL
-- (seconds, 0: none), ticket id, lease (ms), then per limit: microseconds per unit, burst, cost.
-- Returns {1, spent, remaining_1, reset_us_1, ...} or {0, which, a, b, c, remaining_1, ...}
-- where which is the refusing limit's index (a = retry after in us, b = 1 if it can never fit),
-- -1 for concurrency (a = max) or -2 for the budget (a = left, b = estimate, c = spent).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now / 1000)
local n = tonumber(ARGV[1])
local max_inflight = tonumber(ARGV[2])
local budget = tonumber(ARGV[3])
local estimate = tonumber(ARGV[4])
local ticket = ARGV[7]
local lease = tonumber(ARGV[8])

local nexts = {}
local tats = {}
local refusal = nil
for i = 1, n do
  local base = 8 + (i - 1) * 3
  local unit = tonumber(ARGV[base + 1])
  local burst = tonumber(ARGV[base + 2])
  local cost = tonumber(ARGV[base + 3])
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then tat = now end
  local next = tat + cost * unit
  if refusal == nil and next - now > burst * unit then
    local too_large = 0
    if cost > burst then too_large = 1 end
    refusal = {0, i, next - now - burst * unit, too_large, 0}
  end
  tats[i] = tat
  nexts[i] = next
end

-- Where each limit stands: after the taking when admitted, as it was when refused.
local function standings(ends)
  local out = {}
  for i = 1, n do
    local base = 8 + (i - 1) * 3
    local unit = tonumber(ARGV[base + 1])
    local burst = tonumber(ARGV[base + 2])
    local remaining = math.floor((burst * unit - (ends[i] - now)) / unit)
    if remaining < 0 then remaining = 0 end
    out[#out + 1] = remaining
    out[#out + 1] = ends[i] - now
  end
  return out
end

local k = n
local cc = nil
if refusal == nil and max_inflight > 0 then
  k = k + 1
  cc = KEYS[k]
  redis.call('ZREMRANGEBYSCORE', cc, '-inf', now_ms)
  if redis.call('ZCARD', cc) >= max_inflight then
    refusal = {0, -1, max_inflight, 0, 0}
  end
elseif max_inflight > 0 then
  k = k + 1
end

local spent = -1
local bk = nil
local bl = nil
if budget >= 0 then
  bk = KEYS[k + 1]
  bl = KEYS[k + 2]
  if refusal == nil then
    local expired = redis.call('ZRANGEBYSCORE', bl, '-inf', now_ms)
    for _, member in ipairs(expired) do
      local amount = tonumber(string.match(member, '|(%d+)$')) or 0
      redis.call('HINCRBY', bk, 'reserved', -amount)
    end
    if #expired > 0 then redis.call('ZREMRANGEBYSCORE', bl, '-inf', now_ms) end
    redis.call('HSETNX', bk, 'spent', ARGV[5])
    spent = tonumber(redis.call('HGET', bk, 'spent')) or 0
    local reserved = tonumber(redis.call('HGET', bk, 'reserved')) or 0
    if reserved < 0 then reserved = 0 end
    local committed = spent + reserved
    if committed >= budget or committed + estimate > budget then
      local left = budget - committed
      if left < 0 then left = 0 end
      refusal = {0, -2, left, estimate, spent}
    end
  end
end

if refusal ~= nil then
  for _, v in ipairs(standings(tats)) do refusal[#refusal + 1] = v end
  return refusal
end

for i = 1, n do
  local ms = math.ceil((nexts[i] - now) / 1000) + 1000
  redis.call('SET', KEYS[i], string.format('%.0f', nexts[i]), 'PX', ms)
end
if cc ~= nil then
  redis.call('ZADD', cc, now_ms + lease, ticket)
  redis.call('PEXPIRE', cc, lease * 2)
end
if bk ~= nil then
  redis.call('HINCRBY', bk, 'reserved', estimate)
  redis.call('ZADD', bl, now_ms + lease, ticket .. '|' .. string.format('%.0f', estimate))
  local ttl = tonumber(ARGV[6])
  if ttl > 0 then
    redis.call('EXPIRE', bk, ttl)
    redis.call('EXPIRE', bl, ttl)
  end
end
local out = {1, spent}
for _, v in ipairs(standings(nexts)) do out[#out + 1] = v end
return out

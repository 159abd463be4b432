-- Settles one admitted request with what it really used: token limits get back what was
-- reserved and not used (or are charged what was used beyond it), the request leaves the
-- key's concurrency set, and its budget reservation becomes its real cost. Idempotent for the
-- leases: a reservation that already expired is not given back twice.
--
-- KEYS: the m token limit keys, then the concurrency set (if ARGV[2] == '1'), then the budget
-- hash and reservation set (if ARGV[3] == '1').
-- ARGV: m, has concurrency, has budget, ticket id, estimate, cost, then per token limit:
-- microseconds per unit, tokens used minus tokens reserved.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local m = tonumber(ARGV[1])
for i = 1, m do
  local unit = tonumber(ARGV[6 + (i - 1) * 2 + 1])
  local delta = tonumber(ARGV[6 + (i - 1) * 2 + 2])
  local tat = tonumber(redis.call('GET', KEYS[i]))
  if delta < 0 and tat ~= nil then
    tat = tat + delta * unit
    if tat <= now then
      redis.call('DEL', KEYS[i])
    else
      redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
    end
  elseif delta > 0 then
    if tat == nil or tat < now then tat = now end
    tat = tat + delta * unit
    redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
  end
end
local k = m
local ticket = ARGV[4]
if ARGV[2] == '1' then
  k = k + 1
  redis.call('ZREM', KEYS[k], ticket)
end
if ARGV[3] == '1' then
  local bk = KEYS[k + 1]
  local bl = KEYS[k + 2]
  local estimate = tonumber(ARGV[5])
  local cost = tonumber(ARGV[6])
  if redis.call('ZREM', bl, ticket .. '|' .. ARGV[5]) == 1 then
    redis.call('HINCRBY', bk, 'reserved', -estimate)
  end
  if cost > 0 then
    redis.call('HINCRBY', bk, 'spent', ARGV[6])
  end
end
return 1

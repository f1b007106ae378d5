-- The circuit breaker of gateway/core/breaker.py, on shared state (keep the two alike:
-- tests/core/test_breaker.py runs one table against both).
-- KEYS[1]: the vendor's breaker hash. ARGV: op ("peek" | "admit" | "record"), now (seconds; "" for
-- Redis's clock), window, min_calls, failure_ratio, open_for, failure (0|1), probe (0|1).
-- Returns {allowed (0|1), probe (0|1), retry_after (string), state}.
local op = ARGV[1]
local now = tonumber(ARGV[2])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local window, min_calls = tonumber(ARGV[3]), tonumber(ARGV[4])
local ratio, open_for = tonumber(ARGV[5]), tonumber(ARGV[6])
local key = KEYS[1]
local opened = tonumber(redis.call('HGET', key, 'opened_until') or '0')
local probing = tonumber(redis.call('HGET', key, 'probing_until') or '0')
redis.call('PEXPIRE', key, math.ceil((window + open_for) * 2000))

if op == 'peek' then
  if opened == 0 then return {0, 0, '0', 0} end
  if now < opened then return {0, 0, tostring(opened - now), 2} end
  return {0, 0, '0', 1}
end

if op == 'admit' then
  if opened == 0 then return {1, 0, '0', 0} end
  if now < opened then return {0, 0, tostring(opened - now), 2} end
  if now < probing then return {0, 0, tostring(probing - now), 1} end
  redis.call('HSET', key, 'probing_until', tostring(now + open_for))
  return {1, 1, '0', 1}
end

local failure, probe = tonumber(ARGV[7]), tonumber(ARGV[8])
if probe == 1 then
  if failure == 1 then
    redis.call('HSET', key, 'opened_until', tostring(now + open_for), 'probing_until', '0')
    return {0, 0, '0', 2}
  end
  redis.call('DEL', key)
  return {0, 0, '0', 0}
end
local width = window / 10
local current = math.floor(now / width)
local calls, failures = 0, 0
local fields = redis.call('HGETALL', key)
for i = 1, #fields, 2 do
  local name = fields[i]
  local kind, bucket = string.match(name, '^([cf]):(-?%d+)$')
  if kind then
    bucket = tonumber(bucket)
    if bucket <= current - 10 then
      redis.call('HDEL', key, name)
    elseif kind == 'c' then
      calls = calls + tonumber(fields[i + 1])
    else
      failures = failures + tonumber(fields[i + 1])
    end
  end
end
redis.call('HINCRBY', key, 'c:' .. current, 1)
redis.call('HINCRBY', key, 'f:' .. current, failure)
calls, failures = calls + 1, failures + failure
if opened ~= 0 then
  if now < opened then return {0, 0, '0', 2} end
  return {0, 0, '0', 1}
end
if calls >= min_calls and failures >= ratio * calls then
  redis.call('HSET', key, 'opened_until', tostring(now + open_for))
  return {0, 0, '0', 2}
end
return {0, 0, '0', 0}

-- The auth stop of gateway/core/auth_stop.py, on shared state (keep the two alike:
-- tests/core/test_auth_stop.py runs one table against both).
-- KEYS[1]: the vendor's auth stop hash. ARGV: op ("peek" | "admit" | "record" | "unanswered" |
-- "credentials_changed"), now (seconds; "" for Redis's clock), after, probe_every, refused (0|1),
-- probe (0|1).
-- Returns {allowed (0|1), probe (0|1), retry_after (string), state}; for "peek"
-- {state, probing (0|1), retry_after (string)}.
local op = ARGV[1]
local now = tonumber(ARGV[2])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local after, probe_every = tonumber(ARGV[3]), tonumber(ARGV[4])
local MAX_INTERVAL = 600
-- Consecutive refusals stay consecutive however far apart; a week without a call to the
-- vendor forgets them, at the price of that many refusals more.
local KEPT_MS = 7 * 86400 * 1000
local key = KEYS[1]
local fields = redis.call('HMGET', key, 'refusals', 'next_probe', 'interval', 'probing_until')
local refusals = tonumber(fields[1]) or 0
local next_probe = tonumber(fields[2]) or 0
local interval = tonumber(fields[3]) or 0
local probing_until = tonumber(fields[4]) or 0

local function state()
  if next_probe ~= 0 then return 2 end
  if refusals ~= 0 then return 1 end
  return 0
end

local function save()
  redis.call('HSET', key, 'refusals', refusals, 'next_probe', tostring(next_probe),
    'interval', tostring(interval), 'probing_until', tostring(probing_until))
  redis.call('PEXPIRE', key, KEPT_MS)
end

if op == 'peek' then
  if next_probe == 0 then return {state(), 0, '0'} end
  local probing = 0
  if now < probing_until then probing = 1 end
  return {2, probing, tostring(math.max(0, next_probe - now, probing_until - now))}
end

if op == 'admit' then
  if next_probe == 0 then return {1, 0, '0', state()} end
  if now < probing_until then return {0, 0, tostring(probing_until - now), 2} end
  if now < next_probe then return {0, 0, tostring(next_probe - now), 2} end
  probing_until = now + interval
  save()
  return {1, 1, '0', 2}
end

if op == 'credentials_changed' then
  redis.call('DEL', key)
  return {0, 0, '0', 0}
end

local refused, probe = tonumber(ARGV[5]), tonumber(ARGV[6])
if op == 'unanswered' then
  if probe == 1 and next_probe ~= 0 then
    probing_until = 0
    next_probe = now + interval
    save()
  end
  return {0, 0, '0', state()}
end

if refused == 0 then
  redis.call('DEL', key)
  return {0, 0, '0', 0}
end
if next_probe ~= 0 then
  if probe == 1 then
    probing_until = 0
    interval = math.min(interval * 2, MAX_INTERVAL)
    next_probe = now + interval
    save()
  end
  return {0, 0, '0', 2}
end
refusals = refusals + 1
if refusals < after then
  save()
  return {0, 0, '0', 1}
end
interval = probe_every
next_probe = now + interval
save()
return {0, 0, '0', 2}

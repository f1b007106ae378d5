-- Bump cache generations as gateway.core.cache.next_generation does, by the server's clock:
-- KEYS the generations (one vendor's, one slot); ARGV[i] how long to keep KEYS[i] at least,
-- in milliseconds (a longer time it already has is kept).
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
for i, key in ipairs(KEYS) do
  local current = tonumber(redis.call('GET', key) or '0') or 0
  local keep = tonumber(ARGV[i])
  local left = redis.call('PTTL', key)
  if left > keep then
    keep = left
  end
  redis.call('SET', key, string.format('%d', math.max(current + 1, now)), 'PX', keep)
end
return #KEYS

-- Replace a dead letter only if it still exists. KEYS[1] entries hash; ARGV[1] id, ARGV[2] entry.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0

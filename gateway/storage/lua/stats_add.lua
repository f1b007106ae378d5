-- Add one vendor's counters of one minute to that minute's hash and to its hour's.
-- KEYS[1] minute hash, KEYS[2] hour hash, KEYS[3] the vendor's latest success.
-- ARGV[1] minute hash expires at, ARGV[2] hour hash expires at (epoch seconds),
-- ARGV[3] a success time to raise the latest to ('' for none), ARGV[4] when that expires,
-- then field, value pairs.
for i = 5, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('EXPIREAT', KEYS[1], ARGV[1])
redis.call('EXPIREAT', KEYS[2], ARGV[2])
if ARGV[3] ~= '' and tonumber(ARGV[3]) > tonumber(redis.call('GET', KEYS[3]) or '0') then
  redis.call('SET', KEYS[3], ARGV[3])
  redis.call('EXPIREAT', KEYS[3], ARGV[4])
end
return 1

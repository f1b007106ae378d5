-- Store a value only while our lock is held, so a holder whose lock expired (a paused
-- process) cannot overwrite a newer token. KEYS[1] lock, KEYS[2] value; ARGV[1] fence, ARGV[2] value.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2])
  return 1
end
return 0

-- Store a token record only if the stored one is still what the writer read (compare and
-- set), so a writer whose read is stale (its lock expired while it paused) cannot replace
-- a newer refresh token with an older one. KEYS[1] record; ARGV[1] new value, ARGV[2] the
-- value read before ("" when there was none).
local current = redis.call('GET', KEYS[1])
if (current == false and ARGV[2] == '') or current == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[1])
  return 1
end
return 0

-- Take a vendor's refresh lock with a fencing token.
-- KEYS[1] lock, KEYS[2] fence counter; ARGV[1] lock lifetime (ms).
-- Returns the fence (a number that only grows) or false when another holder has it.
local fence = redis.call('INCR', KEYS[2])
if redis.call('SET', KEYS[1], fence, 'NX', 'PX', ARGV[1]) then
  return fence
end
return false

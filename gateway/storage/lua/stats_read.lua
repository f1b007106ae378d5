-- One vendor's counters summed over spans of hashes, read where they are.
-- KEYS[1] the vendor's latest success, then the hashes of each span in turn;
-- ARGV[i] how many hashes span i has. Returns the latest success ('' for none), then
-- per span a flat list of field, sum.
local out = {redis.call('GET', KEYS[1]) or ''}
local k = 2
for s = 1, #ARGV do
  local sums, order = {}, {}
  for _ = 1, tonumber(ARGV[s]) do
    local flat = redis.call('HGETALL', KEYS[k])
    k = k + 1
    for i = 1, #flat, 2 do
      local field = flat[i]
      if sums[field] == nil then
        sums[field] = 0
        order[#order + 1] = field
      end
      sums[field] = sums[field] + tonumber(flat[i + 1])
    end
  end
  local reply = {}
  for _, field in ipairs(order) do
    reply[#reply + 1] = field
    reply[#reply + 1] = string.format('%.0f', sums[field])
  end
  out[#out + 1] = reply
end
return out

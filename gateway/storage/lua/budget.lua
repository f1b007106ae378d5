-- The budget arithmetic of gateway/core/budget.py, on shared state (keep the two alike:
-- tests/core/test_budget.py runs one table against both).
-- KEYS: one hash per budget charged (fields tat, paused, c:<slot or window start ms>), then
-- the vendor's epoch key: an id made when this Redis first held the vendor's budgets. A
-- Redis restarted without its data has none, and a process whose knowledge is of another
-- epoch must put back what it knew (op "restore") before its calls count.
-- ARGV[1]: op: "charge" | "refund" | "adjust" | "peek" | "restore"; ARGV[2]: now in seconds
-- ("" for Redis's clock); ARGV[3]: charge: max_wait; refund: the time the refunded request
-- was to go; ARGV[4]: the epoch the caller knows ("": none yet); ARGV[5]: restore: the epoch
-- to make if there is none; ARGV[6]: "1" to have every count in the reply, not only those
-- the call changed.
-- Then 15 fields per key: kind, limit, per, cost, held, shadow (0|1), window start, end,
-- next end, margin, and for adjust: pause, remaining, reset ("" where the vendor said
-- nothing), spent ("at:units,..." charged elsewhere); for restore: what the caller last saw
-- of the key ("tat,paused,seen,used,slot:units,...": at time seen, used units counted in
-- all), merged in by taking the larger of each.
-- Returns {"epoch", the epoch held or ""} when the caller must restore first, else
-- {admitted (0|1), wait, blocking (0-based, -1 for none), at, epoch, then per key:
-- remaining, reset, paused_for, exceeded (0|1), tat, paused, used (units counted now), and
-- "slot:units,..." of the counts this call changed (or of all)}; times as strings (Lua
-- numbers would be truncated).
local op = ARGV[1]
local now = tonumber(ARGV[2])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local arg = tonumber(ARGV[3]) or 0
local EPS, SLOTS, MAX_MARGIN = 1e-9, 100, 0.1
local FIELDS = 15

local epoch_key, expected = KEYS[#KEYS], ARGV[4]
local epoch = redis.call('GET', epoch_key)
if op == 'restore' then
  if not epoch then
    epoch = ARGV[5]
    redis.call('SET', epoch_key, epoch)
  end
elseif not epoch or (expected ~= '' and epoch ~= expected) then
  return {'epoch', epoch or ''}
end

local function num(x) return string.format('%.17g', x) end
local function ms(t) return math.floor(t * 1000 + 0.5) end

local charges, states = {}, {}
for i = 1, #KEYS - 1 do
  local b = 6 + (i - 1) * FIELDS
  charges[i] = {
    kind = ARGV[b + 1], limit = tonumber(ARGV[b + 2]), per = tonumber(ARGV[b + 3]),
    cost = tonumber(ARGV[b + 4]), held = tonumber(ARGV[b + 5]), shadow = ARGV[b + 6] == '1',
    wstart = tonumber(ARGV[b + 7]), wend = tonumber(ARGV[b + 8]), wnext = tonumber(ARGV[b + 9]),
    margin = tonumber(ARGV[b + 10]),
    pause = tonumber(ARGV[b + 11]), remaining = tonumber(ARGV[b + 12]), reset = tonumber(ARGV[b + 13]),
    spent = ARGV[b + 14], view = ARGV[b + 15],
  }
  local s = {tat = 0, paused = 0, counts = {}, touched = {}, stored = {}}
  local fields = redis.call('HGETALL', KEYS[i])
  for j = 1, #fields, 2 do
    local name, value = fields[j], tonumber(fields[j + 1])
    if name == 'tat' then s.tat = value
    elseif name == 'paused' then s.paused = value
    else
      s.counts[tonumber(string.sub(name, 3))] = value
      s.stored[#s.stored + 1] = name
    end
  end
  states[i] = s
end

local function interval(c) return c.per / c.limit end
local function width(c) return c.per / SLOTS end
local function kept(c) return width(c) + math.max(c.margin, width(c)) end

local function window_at(c, t)
  if t < c.wend then return ms(c.wstart) end
  if t < c.wnext then return ms(c.wend) end
  return nil
end

local function live_slots(c, s, t)
  local slots = {}
  for slot in pairs(s.counts) do
    if slot * width(c) + kept(c) > t - c.per then slots[#slots + 1] = slot end
  end
  table.sort(slots)
  return slots
end

local function units(s, slots)
  local n = 0
  for _, slot in ipairs(slots) do n = n + s.counts[slot] end
  return n
end

local function rolling_used(c, s, t) return units(s, live_slots(c, s, t)) end

local function earliest(c, s)
  local t = math.max(now, s.paused)
  if c.kind == 'bucket' then
    local span = (c.limit - c.held) * interval(c)
    return math.max(t, s.tat + c.cost * interval(c) - span)
  end
  local room = c.limit - c.held - c.cost
  if c.kind == 'rolling' then
    local counted = live_slots(c, s, t)
    local used = units(s, counted)
    for _, slot in ipairs(counted) do
      if used <= room + EPS then break end
      used = used - s.counts[slot]
      t = slot * width(c) + kept(c) + c.per
    end
    return t
  end
  local window = window_at(c, t)
  if window and (s.counts[window] or 0) <= room + EPS then return t end
  if window == ms(c.wstart) and (s.counts[ms(c.wend)] or 0) <= room + EPS then return c.wend end
  return math.max(t, c.wnext)
end

local function take(c, s, at, units)
  if c.kind == 'bucket' then
    local step = units * interval(c)
    if units > 0 then s.tat = math.max(s.tat, at) + step else s.tat = s.tat + step end
    return
  end
  local slot
  if c.kind == 'rolling' then slot = math.floor(at / width(c)) else slot = window_at(c, at) end
  if not slot then return end
  local left = (s.counts[slot] or 0) + units
  if left > EPS then s.counts[slot] = left else s.counts[slot] = nil end
  s.touched[slot] = true
end

local function prune(c, s)
  if c.kind == 'bucket' then return end
  local current = window_at(c, now)
  for slot in pairs(s.counts) do
    if (c.kind == 'rolling'
          and slot * width(c) + width(c) + math.max(width(c), c.margin, c.per * MAX_MARGIN) <= now - c.per)
        or (c.kind == 'fixed' and current and slot < current) then
      s.counts[slot] = nil
    end
  end
end

local function level(c, s)
  local remaining, reset
  if c.kind == 'bucket' then
    local debt = math.max(0, s.tat - now)
    remaining, reset = c.limit - debt / interval(c), debt
  elseif c.kind == 'rolling' then
    local live = live_slots(c, s, now)
    remaining = c.limit - units(s, live)
    if #live > 0 then reset = live[1] * width(c) + kept(c) + c.per - now else reset = 0 end
  else
    local window = window_at(c, now)
    remaining = c.limit - ((window and s.counts[window]) or 0)
    if window == ms(c.wstart) then reset = c.wend - now else reset = c.wnext - now end
  end
  return math.max(0, math.floor(remaining - c.held + EPS)), math.max(0, reset), math.max(0, s.paused - now)
end

local function adjust(c, s)
  if c.pause then s.paused = math.max(s.paused, now + c.pause) end
  for at, units in string.gmatch(c.spent, '([^:,]+):([^,]+)') do
    take(c, s, tonumber(at), tonumber(units))
  end
  if not c.remaining then return end
  local remaining = math.max(0, c.remaining)
  if c.reset and remaining < c.cost then
    s.paused = math.max(s.paused, now + math.max(0, c.reset))
    return
  end
  if c.kind == 'bucket' then
    s.tat = math.max(s.tat, now + (c.limit - remaining) * interval(c))
    return
  end
  prune(c, s)
  local ours, used
  if c.kind == 'rolling' then
    ours, used = now + c.per, rolling_used(c, s, now)
  else
    local window = window_at(c, now)
    if window == ms(c.wstart) then ours = c.wend else ours = c.wnext end
    used = (window and s.counts[window]) or 0
  end
  if c.reset and now + c.reset < ours - EPS then return end
  if c.limit - used > remaining then take(c, s, now, c.limit - used - remaining) end
end

local function used_now(c, s)
  if c.kind == 'rolling' then return rolling_used(c, s, now) end
  if c.kind == 'fixed' then return s.counts[window_at(c, now)] or 0 end
  return 0
end

-- What another process last saw of a key this Redis lost: the larger of each count is kept,
-- so the most used of the processes' views is what counts from now on. The caller knows its
-- own slots' counts as of its last charge in each, and the total as of its last call: what
-- the slots miss of that total was charged before then, and is counted then (a little
-- late to expire, never early).
local function restore(c, s)
  local tat, paused, seen, used, rest = string.match(c.view, '^([^,]*),([^,]*),([^,]*),([^,]*)(.*)$')
  if not tat then return end
  s.tat = math.max(s.tat, tonumber(tat) or 0)
  s.paused = math.max(s.paused, tonumber(paused) or 0)
  for slot, units in string.gmatch(rest, '([^:,]+):([^,]+)') do
    slot, units = tonumber(slot), tonumber(units)
    if units > (s.counts[slot] or 0) then s.counts[slot] = units end
  end
  seen, used = tonumber(seen), tonumber(used)
  if c.kind == 'rolling' and used - rolling_used(c, s, seen) > EPS then
    take(c, s, seen, used - rolling_used(c, s, seen))
  elseif c.kind == 'fixed' and window_at(c, seen) then
    s.counts[window_at(c, seen)] = math.max(s.counts[window_at(c, seen)] or 0, used)
  end
  prune(c, s)
end

local admitted, at, blocking = 0, now, -1
local exceeded = {}
if op == 'charge' then
  local times = {}
  for i, c in ipairs(charges) do
    prune(c, states[i])
    times[i] = earliest(c, states[i])
    exceeded[i] = times[i] > now + EPS
    if not c.shadow and times[i] > at + EPS then at, blocking = times[i], i - 1 end
  end
  if at - now <= arg + EPS then admitted = 1 end
  for _, c in ipairs(charges) do
    if c.kind == 'fixed' and not window_at(c, at) then admitted = 0 end
  end
  if admitted == 1 then
    for i, c in ipairs(charges) do
      if not c.shadow or times[i] <= at + EPS then take(c, states[i], at, c.cost) end
    end
  end
elseif op == 'refund' then
  for i, c in ipairs(charges) do take(c, states[i], arg, -c.cost) end
elseif op == 'adjust' then
  for i, c in ipairs(charges) do adjust(c, states[i]) end
elseif op == 'restore' and epoch ~= expected then
  for i, c in ipairs(charges) do restore(c, states[i]) end
end

local result = {admitted, num(at - now), blocking, num(at), epoch}
for i, c in ipairs(charges) do
  local s = states[i]
  if op ~= 'peek' then
    -- Only the counts that stopped counting are removed (most calls remove none).
    local gone = {}
    for _, name in ipairs(s.stored) do
      if not s.counts[tonumber(string.sub(name, 3))] then gone[#gone + 1] = name end
    end
    if #gone > 0 then redis.call('HDEL', KEYS[i], unpack(gone)) end
    local fields = {'tat', num(s.tat), 'paused', num(s.paused)}
    for slot, units in pairs(s.counts) do
      fields[#fields + 1] = 'c:' .. string.format('%.0f', slot)
      fields[#fields + 1] = num(units)
    end
    redis.call('HSET', KEYS[i], unpack(fields))
    -- Kept while anything in it still counts: a bucket until full, a pause until over, a
    -- fixed window until the next ends, a rolling count until its margin has passed.
    local last = math.max(s.tat, s.paused, c.wnext or 0)
    for slot in pairs(s.counts) do
      if c.kind == 'rolling' then
        last = math.max(last, slot * width(c) + width(c) + math.max(width(c), c.margin, c.per * MAX_MARGIN) + c.per)
      end
    end
    local keep = math.max(0, last - now) + 60
    redis.call('PEXPIRE', KEYS[i], math.ceil(keep * 1000))
  end
  local remaining, reset, paused_for = level(c, s)
  if ARGV[6] == '1' then
    for slot in pairs(s.counts) do s.touched[slot] = true end
  end
  local touched = {}
  for slot in pairs(s.touched) do
    touched[#touched + 1] = string.format('%.0f', slot) .. ':' .. num(s.counts[slot] or 0)
  end
  result[#result + 1] = remaining
  result[#result + 1] = num(reset)
  result[#result + 1] = num(paused_for)
  result[#result + 1] = (exceeded[i] and 1) or 0
  result[#result + 1] = num(s.tat)
  result[#result + 1] = num(s.paused)
  result[#result + 1] = num(used_now(c, s))
  result[#result + 1] = table.concat(touched, ',')
end
return result

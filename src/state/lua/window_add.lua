-- Fixed-window admission: add ARGV[1] to the counter at KEYS[1] only if the new total stays
-- within ARGV[2]. One script, so that two gateway nodes can never both pass the check and then
-- overshoot the limit together.
--
-- KEYS[1]  the counter of the current window (the caller puts the window index in the key,
--          so the counter rolls over by itself)
-- ARGV[1]  amount to add, an integer in 0 ..= 2^53 - 1
-- ARGV[2]  limit, an integer in 0 ..= 2^53 - 1
-- ARGV[3]  counter lifetime in milliseconds (the rest of the window plus a margin)
--
-- Returns {allowed, total}: allowed is 1 with the new total, or 0 with the unchanged total.
-- A rejected attempt does not create or extend the counter.
--
-- Lua numbers are doubles. With amount and limit below 2^53 the comparison below is exact for
-- any 64-bit counter, and totals are returned as Redis computed them, never through a double.

local stored = redis.call('GET', KEYS[1])
local current = 0
if stored then
  current = tonumber(stored)
  if not current then
    return redis.error_reply('ERR window counter ' .. KEYS[1] .. ' is not an integer')
  end
else
  stored = 0
end

if current + tonumber(ARGV[1]) > tonumber(ARGV[2]) then
  return {0, stored}
end

local total = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, total}

-- Batched window counters: apply every change of a batch, or none if any limit would be
-- exceeded. One script, so that a request reserving on several limits at once (key, group and
-- proxy; per minute, day and month) can never pass some and be refused by others, and two
-- gateway nodes can never both pass a check and then overshoot a limit together.
--
-- KEYS[i]        the counter of op i in its window (the caller puts the window index in the
--                key, so the counter rolls over by itself)
-- ARGV[3i - 2]   amount, an integer in -(2^53 - 1) ..= 2^53 - 1 (negative: a refund)
-- ARGV[3i - 1]   limit, an integer in 0 ..= 2^53 - 1, or -1 when the op cannot be refused
--                (no limit, or an amount <= 0)
-- ARGV[3i]       counter lifetime in milliseconds (the rest of the window, the time it is kept
--                for history, and a margin)
--
-- Returns {passed_1, total_1, passed_2, total_2, ...}. When every op passed, all were applied
-- and each total is the counter after the batch. Otherwise nothing was changed (no counter is
-- created or extended), each total is the counter as it is, and passed is 0 exactly on the ops
-- whose limit refused.
--
-- A key given twice is checked and applied in order, as if its ops ran one after the other.
--
-- Lua numbers are doubles. With amounts and limits below 2^53 the comparisons are exact for the
-- counters this code writes, and totals are returned as Redis stores them (the stored string or
-- the INCRBY reply), never through a double. Everything that could fail is checked before the
-- first write, because a script that fails halfway keeps what it already wrote.

local RANGE = 2 ^ 62

local n = #KEYS
local current = {}
local passed = {}
local running = {}
local all_passed = true

for i = 1, n do
  local key = KEYS[i]
  local stored = redis.call('GET', key)
  local value = 0
  if stored then
    -- tonumber would also take '1.5' or '1e3', which INCRBY then rejects halfway through.
    if not string.match(stored, '^-?%d+$') then
      return redis.error_reply('ERR window counter ' .. key .. ' is not an integer')
    end
    value = tonumber(stored)
    -- Far from any real total, and keeps INCRBY from overflowing 64 bits in the second pass.
    if value >= RANGE or value <= -RANGE then
      return redis.error_reply('ERR window counter ' .. key .. ' is out of range')
    end
  else
    stored = 0
  end
  current[i] = stored

  local amount = tonumber(ARGV[3 * i - 2])
  local limit = tonumber(ARGV[3 * i - 1])
  local before = running[key] or value
  if limit >= 0 and before + amount > limit then
    passed[i] = 0
    all_passed = false
  else
    passed[i] = 1
  end
  running[key] = before + amount
end

local reply = {}
if not all_passed then
  for i = 1, n do
    reply[2 * i - 1] = passed[i]
    reply[2 * i] = current[i]
  end
  return reply
end

for i = 1, n do
  reply[2 * i - 1] = 1
  reply[2 * i] = redis.call('INCRBY', KEYS[i], ARGV[3 * i - 2])
  redis.call('PEXPIRE', KEYS[i], ARGV[3 * i])
end
return reply

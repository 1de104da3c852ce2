-- One group commit: append frames to a log, once, whatever retries of it arrive.
--
-- KEYS: 1 the stream, 2 the head hash, 3 recent commits (id -> "first total"),
--       4 when each recent commit may be forgotten (sorted set, server milliseconds).
-- ARGV: 1 commit id, 2 records, 3 bytes, 4 appended ms, 5 frames, 6 how long to remember (ms).
-- Returns {first, total}; errors SGNOLOG (no such log), SGCLOSED <state>.

local done = redis.call('HGET', KEYS[3], ARGV[1])
if done then
  -- A retry of a commit that landed (its reply was lost): the same answer, nothing appended.
  local first, total = string.match(done, '^(%d+) (%d+)$')
  return {tonumber(first), tonumber(total)}
end

local state = redis.call('HGET', KEYS[2], 'state')
if not state then
  return redis.error_reply('SGNOLOG')
end
if state ~= 'open' then
  return redis.error_reply('SGCLOSED ' .. state)
end

local count = tonumber(ARGV[2])
local total = redis.call('HINCRBY', KEYS[2], 'total', count)
redis.call('HINCRBY', KEYS[2], 'bytes', ARGV[3])
redis.call('HSET', KEYS[2], 'at', ARGV[4])
local first = total - count
redis.call('XADD', KEYS[1], '*', 'd', ARGV[5], 'f', first, 'n', count)

local remember = tonumber(ARGV[6])
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now_ms, 'LIMIT', 0, 100)
if #expired > 0 then
  redis.call('HDEL', KEYS[3], unpack(expired))
  redis.call('ZREM', KEYS[4], unpack(expired))
end
redis.call('HSET', KEYS[3], ARGV[1], first .. ' ' .. total)
redis.call('ZADD', KEYS[4], now_ms + remember, ARGV[1])
redis.call('PEXPIRE', KEYS[3], remember)
redis.call('PEXPIRE', KEYS[4], remember)
return {first, total}

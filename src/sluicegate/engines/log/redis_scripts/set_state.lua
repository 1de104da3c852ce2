-- Change a log's state, writing the change's mark into the stream in the same step, so
-- that no append is accepted against the old state once this returns.
--
-- KEYS: 1 the stream, 2 the head hash.
-- ARGV: 1 the new state, 2 its mark frame.
-- Returns {state, total, bytes, last append ms or ''}; errors SGNOLOG, SGCLOSED sealed.

local head = redis.call('HMGET', KEYS[2], 'state', 'total', 'bytes', 'at')
local state = head[1]
if not state then
  return redis.error_reply('SGNOLOG')
end
local total = head[2] or '0'
if state ~= ARGV[1] then
  if state == 'sealed' then
    return redis.error_reply('SGCLOSED sealed')
  end
  redis.call('HSET', KEYS[2], 'state', ARGV[1])
  redis.call('XADD', KEYS[1], '*', 'd', ARGV[2], 'f', total, 'n', 0)
end
return {ARGV[1], total, head[3] or '0', head[4] or ''}

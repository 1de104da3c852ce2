-- Start a follower: its consumer group becomes the log's only one (a takeover: the
-- groups of earlier readers go, so they can read no more and their pending lists no
-- longer claim entries as unprocessed), created at the first retained entry if new.
--
-- KEYS: 1 the stream, 2 the head hash.
-- ARGV: 1 the follower's group.
-- Returns {trimmed entry id or '', trimmed up to index or ''}; errors SGNOLOG.

if redis.call('EXISTS', KEYS[2]) == 0 then
  return redis.error_reply('SGNOLOG')
end
local mine = false
if redis.call('EXISTS', KEYS[1]) == 1 then
  for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local name
    for i = 1, #group, 2 do
      if group[i] == 'name' then name = group[i + 1] end
    end
    if name == ARGV[1] then
      mine = true
    else
      redis.call('XGROUP', 'DESTROY', KEYS[1], name)
    end
  end
end
if not mine then
  redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
end
local trimmed = redis.call('HMGET', KEYS[2], 'tid', 'tend')
return {trimmed[1] or '', trimmed[2] or ''}

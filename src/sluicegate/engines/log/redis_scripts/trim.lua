-- Forget a log's entries up to a position: drop the stream entries before it, acknowledge
-- them in every consumer group (so no pending list names a deleted entry), and record a
-- partial trim (frames of a stream entry that stays) in the head hash, where reads find it.
-- The counters stay. A sealed log keeps its last entry (the seal's mark), so a new
-- follower still learns that the log has ended.
--
-- KEYS: 1 the stream, 2 the head hash.
-- ARGV: 1 milliseconds and 2 sequence of the stream entry id,
--       3 '' to drop that entry too, or the index up to which its frames are trimmed.
-- Returns the number of stream entries dropped; errors SGNOLOG.

local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local function before(ams, aseq, bms, bseq)
  return ams < bms or (ams == bms and aseq < bseq)
end

local state = redis.call('HGET', KEYS[2], 'state')
if not state then
  return redis.error_reply('SGNOLOG')
end
local ms, seq = tonumber(ARGV[1]), tonumber(ARGV[2])
local partial = ARGV[3] ~= ''

-- Everything strictly before the stream id cut (cut_ms, cut_seq) goes. Ids stay strings
-- where they can: Lua numbers print in %.14g.
local cut_ms, cut_seq, cut = ms, seq, ARGV[1] .. '-' .. ARGV[2]
if not partial then
  cut_seq = seq + 1
  cut = ARGV[1] .. '-' .. string.format('%d', cut_seq)
end

local tid = redis.call('HGET', KEYS[2], 'tid')
if partial then
  local tend = redis.call('HGET', KEYS[2], 'tend')
  local later = true
  if tid then
    local tms, tseq = parse(tid)
    later = before(tms, tseq, ms, seq) or (tms == ms and tseq == seq and tonumber(tend) < tonumber(ARGV[3]))
  end
  if later then
    redis.call('HSET', KEYS[2], 'tid', ARGV[1] .. '-' .. ARGV[2], 'tend', ARGV[3])
  end
elseif tid then
  local tms, tseq = parse(tid)
  if before(tms, tseq, cut_ms, cut_seq) then
    redis.call('HDEL', KEYS[2], 'tid', 'tend')
  end
end

if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if state == 'sealed' then
  local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  if #last > 0 then
    local lms, lseq = parse(last[1][1])
    if before(lms, lseq, cut_ms, cut_seq) then
      cut = last[1][1]
    end
  end
end

for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name
  for i = 1, #group, 2 do
    if group[i] == 'name' then name = group[i + 1] end
  end
  while true do
    local pending = redis.call('XPENDING', KEYS[1], name, '-', '(' .. cut, 1000)
    if #pending == 0 then break end
    local ids = {}
    for i, item in ipairs(pending) do ids[i] = item[1] end
    redis.call('XACK', KEYS[1], name, unpack(ids))
    if #pending < 1000 then break end
  end
end
return redis.call('XTRIM', KEYS[1], 'MINID', cut)

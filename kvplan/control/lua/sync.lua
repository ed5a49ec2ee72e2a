-- Read the whole state and the stream position it corresponds to, atomically. When the state
-- is missing (first start, or Redis lost its data) and a seed is given, seed it with a new epoch
-- from ARGV, so a version counter that restarted is never mistaken for an older one. Without a
-- seed an empty state stays empty (the caller reports it).
-- KEYS[1] state hash, KEYS[2] stream
-- ARGV: new epoch, actor, at, stream maxlen, then pairs of bucket, record json (the seed; may be none)
local seeded = 0
if redis.call('EXISTS', KEYS[1]) == 0 and #ARGV >= 6 then
  seeded = 1
  redis.call('HSET', KEYS[1], '_epoch', ARGV[1], '_version', 0)
  for i = 5, #ARGV, 2 do
    redis.call('HSET', KEYS[1], 'b:' .. ARGV[i], ARGV[i + 1])
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*',
      'v', 0, 'epoch', ARGV[1], 'bucket', ARGV[i], 'actor', ARGV[2], 'action', 'seed',
      'reason', 'state was empty', 'at', ARGV[3], 'before', '', 'after', ARGV[i + 1])
  end
end
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local last_id = '0-0'
if #last > 0 then last_id = last[1][1] end
return {seeded, last_id, redis.call('HGETALL', KEYS[1])}

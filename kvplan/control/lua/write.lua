-- One atomic flag write: merge the change into the bucket's stored record, bump the version,
-- store it, and append one entry to the stream that is both the audit trail and the
-- change notification routers follow.
-- KEYS[1] state hash (fields _epoch, _version, b:<bucket>), KEYS[2] stream
-- ARGV: bucket, change json, expect json ('' = none), actor, action, reason, at, stream maxlen,
-- write id (the writer's, so that it can find this entry when the reply is lost)
local epoch = redis.call('HGET', KEYS[1], '_epoch')
if not epoch then return {'nostate'} end
local raw = redis.call('HGET', KEYS[1], 'b:' .. ARGV[1])
if not raw then return {'unknown'} end
local cur = cjson.decode(raw)
if ARGV[3] ~= '' then
  for k, v in pairs(cjson.decode(ARGV[3])) do
    if cur[k] ~= v then return {'conflict', raw, k} end
  end
end
local changed = false
for k, v in pairs(cjson.decode(ARGV[2])) do
  if cur[k] ~= v then
    changed = true
    cur[k] = v
  end
end
if not changed then
  return {'same', raw, redis.call('HGET', KEYS[1], '_version'), epoch}
end
local version = redis.call('HINCRBY', KEYS[1], '_version', 1)
local after = cjson.encode(cur)
redis.call('HSET', KEYS[1], 'b:' .. ARGV[1], after)
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[8], '*',
  'v', version, 'epoch', epoch, 'bucket', ARGV[1], 'actor', ARGV[4], 'action', ARGV[5],
  'reason', ARGV[6], 'at', ARGV[7], 'before', raw, 'after', after, 'wid', ARGV[9])
return {'ok', after, tostring(version), epoch, id}

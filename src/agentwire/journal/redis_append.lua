#!lua
-- Append a batch of events atomically: each gets the next seq of its stream and is stored under the
-- stream ID "<seq>-0" (so reading by seq is plain arithmetic), its document is written in the same
-- script, and retention trims the oldest. Redis runs a script to completion without interleaving;
-- the checks that can fail come before the first write, and the shebang (no flags: may write,
-- deny-oom) makes a Redis that is out of memory refuse the whole script before it starts.
--
-- KEYS: 1 journal epoch (string), 2 stream names (set),
--       then per stream i: 1+2i meta hash {epoch, first, head}, 2+2i events (stream),
--       then one docs hash per document kind.
-- ARGV: 1 epoch for the journal if it has none yet, 2 retention (0 keeps everything),
--       3 stream count S, then the S stream names,
--       then per event: stream index (1..S), type, the envelope after `{"seq":N,`, docs index,
--                       and if the docs index is not 0: document id, document body ("" deletes).
-- Returns the head of each stream before this batch; the caller counts its events from there.

local retention = tonumber(ARGV[2])
local nstreams = tonumber(ARGV[3])
local heads = {}
local firsts = {}
local fresh = {}

for i = 1, nstreams do
  local found = redis.call('HMGET', KEYS[1 + 2 * i], 'head', 'first')
  if found[1] then
    heads[i] = tonumber(found[1])
    firsts[i] = tonumber(found[2])
  else
    if redis.call('EXISTS', KEYS[2 + 2 * i]) == 1 then
      return redis.error_reply('agentwire: events of stream ' .. ARGV[3 + i] .. ' exist without their head')
    end
    heads[i] = 0
    firsts[i] = 1
    fresh[i] = true
  end
end

local before = {}
local epoch = false
for i = 1, nstreams do
  before[i] = heads[i]
  if fresh[i] then
    -- A new stream takes the journal's epoch, made once per journal: a wiped Redis makes a new one.
    if not epoch then
      redis.call('SET', KEYS[1], ARGV[1], 'NX')
      epoch = redis.call('GET', KEYS[1])
    end
    redis.call('HSET', KEYS[1 + 2 * i], 'epoch', epoch, 'first', '1')
    redis.call('SADD', KEYS[2], ARGV[3 + i])
  end
end

local docs_base = 2 + 2 * nstreams
local a = 4 + nstreams
while a <= #ARGV do
  local s = tonumber(ARGV[a])
  local seq = heads[s] + 1
  heads[s] = seq
  local text = string.format('%d', seq)
  redis.call('XADD', KEYS[2 + 2 * s], text .. '-0', 't', ARGV[a + 1], 'r', '{"seq":' .. text .. ',' .. ARGV[a + 2])
  local k = tonumber(ARGV[a + 3])
  if k > 0 then
    if ARGV[a + 5] == '' then
      redis.call('HDEL', KEYS[docs_base + k], ARGV[a + 4])
    else
      redis.call('HSET', KEYS[docs_base + k], ARGV[a + 4], ARGV[a + 5])
    end
    a = a + 6
  else
    a = a + 4
  end
end

for i = 1, nstreams do
  local head = heads[i]
  local first = firsts[i]
  -- Trim in steps of a tenth, not per event, so a busy stream does not trim on every append.
  if retention > 0 and head - first + 1 > retention + math.max(1, math.floor(retention / 10)) then
    first = head - retention + 1
    redis.call('XTRIM', KEYS[2 + 2 * i], 'MINID', string.format('%d-0', first))
    redis.call('HSET', KEYS[1 + 2 * i], 'head', string.format('%d', head), 'first', string.format('%d', first))
  else
    redis.call('HSET', KEYS[1 + 2 * i], 'head', string.format('%d', head))
  end
end

return before

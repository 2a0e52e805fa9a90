-- Take, renew or give up a lease atomically: at most one owner holds a key until it expires.
-- KEYS: 1 the lease.  ARGV: 1 owner, 2 milliseconds to hold it for (0 gives it up).
-- Returns 1 if `owner` holds the lease now (or has given it up), 0 while another owner holds it.

local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return 0
end
if ARGV[2] == '0' then
  if holder then
    redis.call('DEL', KEYS[1])
  end
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 1

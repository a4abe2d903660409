//! The Lua scripts that keep each channel consistent.
//!
//! A script runs atomically in Redis: the offset, the kept history and the pub/sub message of
//! a publication are made in one step, so every node sees publications on the channel's topic
//! in offset order, and a history read never sees an offset without its entry. Why Lua and not
//! only a stream per channel: the offset must be assigned and published in the same step as
//! the entry is kept, or two nodes publishing at once could announce offsets out of order.

use std::sync::LazyLock;

use redis::Script;

/// Now, as Unix milliseconds from the Redis clock (all nodes share it).
const NOW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

/// KEYS: meta, history. ARGV: new epoch, codec, data, history size, history TTL (ms, 0:
/// none), meta TTL (ms), topic. Returns `{epoch, offset}`.
///
/// A channel whose meta is gone (never published, expired, or Redis restarted empty) starts
/// over in the new epoch given, dropping any history left from before.
pub(crate) static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{NOW}
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
end
redis.call('HINCRBY', KEYS[1], 'o', 1)
-- As Redis writes it: Lua would print a large number in exponent form.
local offset = redis.call('HGET', KEYS[1], 'o')
redis.call('PEXPIRE', KEYS[1], ARGV[6])
local size = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
if size > 0 then
  local expires = 0
  if ttl > 0 then expires = now + ttl end
  redis.call('XADD', KEYS[2], 'MAXLEN', size, offset .. '-0',
    'c', ARGV[2], 'd', ARGV[3], 'x', expires)
  if ttl > 0 then
    redis.call('PEXPIRE', KEYS[2], ttl)
  else
    redis.call('PEXPIRE', KEYS[2], ARGV[6])
  end
else
  redis.call('DEL', KEYS[2])
end
redis.call('PUBLISH', ARGV[7], 'p' .. epoch .. '\n' .. offset .. '\n' .. ARGV[2] .. ARGV[3])
return {{epoch, tonumber(offset)}}
"
    ))
});

/// KEYS: meta, history. ARGV: since epoch ('' for none), since offset, limit (-1: none),
/// new epoch, meta TTL (ms). Returns `{epoch, top, recoverable (0/1), {offset, codec, data,
/// ...}}`.
///
/// A channel without meta gets it here, in the new epoch: a subscriber that joins before the
/// first publication holds a position the publications then continue.
pub(crate) static HISTORY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{NOW}
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', ARGV[4], 'o', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return {{ARGV[4], 0, 0, {{}}}}
end
local top = tonumber(redis.call('HGET', KEYS[1], 'o'))
local limit = tonumber(ARGV[3])
local since = nil
if ARGV[1] == epoch then since = tonumber(ARGV[2]) end
local start = '-'
if since then
  if since >= top then
    return {{epoch, top, since == top and 1 or 0, {{}}}}
  end
  start = '(' .. ARGV[2] .. '-0'
end
local out = {{}}
local first = nil
local count = 0
for _, entry in ipairs(redis.call('XRANGE', KEYS[2], start, '+')) do
  local fields = {{}}
  local list = entry[2]
  for i = 1, #list, 2 do fields[list[i]] = list[i + 1] end
  local expires = tonumber(fields['x'])
  if expires == 0 or expires > now then
    local offset = string.match(entry[1], '^(%d+)')
    if not first then first = tonumber(offset) end
    if limit >= 0 and count >= limit then break end
    out[#out + 1] = offset
    out[#out + 1] = fields['c']
    out[#out + 1] = fields['d']
    count = count + 1
  end
end
local recoverable = 0
if since and first == since + 1 then recoverable = 1 end
return {{epoch, top, recoverable, out}}
"
    ))
});

/// KEYS: members, member expiry. ARGV: connection id, member (JSON), presence TTL (ms),
/// topic. Adds or refreshes a member; a new one is announced with `j`. The keys outlive the
/// members' deadlines (four TTLs), so that a sweep still finds a lapsed member to announce
/// its leave; they vanish on their own only when nobody swept them.
pub(crate) static ADD_MEMBER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{NOW}
local added = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], 4 * tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[2], 4 * tonumber(ARGV[3]))
if added == 1 then redis.call('PUBLISH', ARGV[4], 'j' .. ARGV[2]) end
return added
"
    ))
});

/// KEYS: members, member expiry. ARGV: connection id, topic. Removes a member and announces
/// it with `l`.
pub(crate) static REMOVE_MEMBER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local member = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if member then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('PUBLISH', ARGV[2], 'l' .. member)
end
return member and 1 or 0
",
    )
});

/// KEYS: members, member expiry. ARGV: topic, '1' to return the members. Removes (and
/// announces) the members whose node stopped refreshing them, then lists the rest.
pub(crate) static SWEEP_MEMBERS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{NOW}
for _, conn in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  local member = redis.call('HGET', KEYS[1], conn)
  redis.call('ZREM', KEYS[2], conn)
  if member then
    redis.call('HDEL', KEYS[1], conn)
    redis.call('PUBLISH', ARGV[1], 'l' .. member)
  end
end
if ARGV[2] == '1' then return redis.call('HVALS', KEYS[1]) end
return {{}}
"
    ))
});

/// KEYS: lease. ARGV: holder, lease (ms). Takes the lease if free or already ours; returns
/// the holder after the call.
pub(crate) static CLAIM_NODE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local holder = redis.call('GET', KEYS[1])
if not holder or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
return holder
",
    )
});

/// KEYS: lease. ARGV: holder. Gives the lease up if it is ours.
pub(crate) static RELEASE_NODE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
    )
});

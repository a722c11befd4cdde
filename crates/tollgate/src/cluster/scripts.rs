//! The Lua scripts of the shared budgets: each shared change is one of them, so it is
//! atomic. docs/cluster.md explains the layout and why it stays right through faults.
//!
//! Layout (per epoch `E`, see `names.rs`): `tg2:E:a:<account>` (granted, charged,
//! reserved; `granted` present = loaded; sync, sync_until, synced_at while checked),
//! `tg2:E:k:<key>` (usage, limit, reserved; `loaded`), `tg2:E:r:<account>` (leases),
//! `tg2:E:rd:<account>` (reservation data and markers), `tg2:E:m:<account>` (marker
//! expiries), `tg2:E:sl:<account>` (settles logged during a check).
//!
//! Reservation data is `<state> <key> <amount>`: `l` live, `L` live and re-registered
//! after a data loss, `x`/`X` their lease ran out (amount given back; a late settle still
//! charges), `t` settled after being re-registered (a tombstone, so a replayed
//! registration cannot hold it again). A settle deletes an `l`/`x` entry, so a settle that
//! runs again finds nothing and counts nothing.

/// The start of every budget script. KEYS[1] is the epoch marker, ARGV[1] the epoch
/// the caller knows and ARGV[2] the highest write counter it saw in it. A missing
/// marker (Redis lost its data) or a counter below what a replica saw (Redis came
/// back from an older snapshot) starts a new epoch; a caller behind the current epoch
/// is told so and nothing runs. Otherwise defines `now`, `seq`, `int` and `parse`.
macro_rules! prologue {
    () => {
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function int(x) return string.format('%.0f', x) end
local function parse(d)
  local sp = string.find(d, ' ', 3, true)
  return string.sub(d, 1, 1), string.sub(d, 3, sp - 1), tonumber(string.sub(d, sp + 1))
end
local ep = redis.call('HMGET', KEYS[1], 'id', 'seq', 'ready')
if not ep[1] or (ep[1] == ARGV[1] and tonumber(ep[2]) < tonumber(ARGV[2])) then
  local id = t[1] .. string.format('%06d', tonumber(t[2]))
  redis.call('HSET', KEYS[1], 'id', id, 'seq', 1, 'ready', int(now + GRACE_MS))
  return {'epoch', '0', id, 'GRACE_MS'}
end
if ep[1] ~= ARGV[1] then
  return {'epoch', '0', ep[1], int(math.max(0, tonumber(ep[3]) - now))}
end
local seq = int(redis.call('HINCRBY', KEYS[1], 'seq', 1))
"#
    };
}

/// KEYS: epoch, account, key, leases, data, markers. ARGV: epoch, seen, lease_ms, id,
/// amount, key id, key-hash prefix.
pub const RESERVE: &str = concat!(
    prologue!(),
    r#"
if now < tonumber(ep[3]) then return {'wait', seq, int(tonumber(ep[3]) - now)} end
-- Leases that ran out give their amount back; a marker remembers them for a late settle.
local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 256)
for _, id in ipairs(expired) do
  local d = redis.call('HGET', KEYS[5], id)
  if d then
    local s, kid, amt = parse(d)
    if s == 'l' or s == 'L' then
      redis.call('HINCRBY', KEYS[2], 'reserved', int(-amt))
      if redis.call('EXISTS', ARGV[7] .. kid) == 1 then
        redis.call('HINCRBY', ARGV[7] .. kid, 'reserved', int(-amt))
      end
      redis.call('HSET', KEYS[5], id, (s == 'L' and 'X' or 'x') .. string.sub(d, 2))
      redis.call('ZADD', KEYS[6], int(now + MARKER_TTL_MS), id)
    end
  end
  redis.call('ZREM', KEYS[4], id)
end
local gone = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now, 'LIMIT', 0, 256)
for _, id in ipairs(gone) do
  redis.call('HDEL', KEYS[5], id)
  redis.call('ZREM', KEYS[6], id)
end
local a = redis.call('HMGET', KEYS[2], 'granted', 'charged', 'reserved')
local k = redis.call('HMGET', KEYS[3], 'usage', 'limit', 'reserved', 'loaded')
if not a[1] or not k[4] then return {'load', seq} end
local amount = tonumber(ARGV[5])
local available = tonumber(a[1]) - tonumber(a[2] or 0) - tonumber(a[3] or 0)
if k[2] ~= 'none' then
  local remaining = tonumber(k[2]) - tonumber(k[1] or 0) - tonumber(k[3] or 0)
  if amount > remaining then return {'key', seq, k[2], int(remaining)} end
end
if amount > available then return {'balance', seq, int(available)} end
redis.call('HINCRBY', KEYS[2], 'reserved', ARGV[5])
redis.call('HINCRBY', KEYS[3], 'reserved', ARGV[5])
redis.call('ZADD', KEYS[4], int(now + tonumber(ARGV[3])), ARGV[4])
redis.call('HSET', KEYS[5], ARGV[4], 'l ' .. ARGV[6] .. ' ' .. ARGV[5])
return {'ok', seq}
"#
);

/// KEYS: epoch, account, key, leases, data, markers, sync log. ARGV: epoch, seen, id,
/// cost. Counts the cost once: a settle that finds no reservation (it ran before) is a
/// no-op answered `dup`.
pub const SETTLE: &str = concat!(
    prologue!(),
    r#"
local d = redis.call('HGET', KEYS[5], ARGV[3])
if not d or string.sub(d, 1, 1) == 't' then return {'dup', seq} end
local s, kid, amt = parse(d)
if s == 'l' or s == 'L' then
  redis.call('HINCRBY', KEYS[2], 'reserved', int(-amt))
  if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('HINCRBY', KEYS[3], 'reserved', int(-amt)) end
  redis.call('ZREM', KEYS[4], ARGV[3])
else
  redis.call('ZREM', KEYS[6], ARGV[3])
end
if s == 'L' or s == 'X' then
  redis.call('HSET', KEYS[5], ARGV[3], 't ' .. kid .. ' 0')
  redis.call('ZADD', KEYS[6], int(now + MARKER_TTL_MS), ARGV[3])
else
  redis.call('HDEL', KEYS[5], ARGV[3])
end
redis.call('HINCRBY', KEYS[2], 'charged', ARGV[4])
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('HINCRBY', KEYS[3], 'usage', ARGV[4]) end
local until_ms = redis.call('HGET', KEYS[2], 'sync_until')
if until_ms and tonumber(until_ms) >= now then
  redis.call('HSET', KEYS[7], ARGV[3], kid .. ' ' .. ARGV[4])
end
return {'ok', seq}
"#
);

/// KEYS: epoch. ARGV: epoch, seen, lease_ms, epoch prefix, then (account, id) pairs.
/// Extends the leases still held (never shortens one); answers how many were not held.
/// With no pairs it is the heartbeat that notices a new epoch.
pub const RENEW: &str = concat!(
    prologue!(),
    r#"
local expiry = int(now + tonumber(ARGV[3]))
local lost = 0
for i = 5, #ARGV, 2 do
  local z = ARGV[4] .. 'r:' .. ARGV[i]
  if redis.call('ZSCORE', z, ARGV[i + 1]) then
    redis.call('ZADD', z, 'XX', 'GT', expiry, ARGV[i + 1])
  else
    lost = lost + 1
  end
end
return {'ok', seq, tostring(lost)}
"#
);

/// KEYS: epoch. ARGV: epoch, seen, lease_ms, epoch prefix, then (account, id, key,
/// amount) quads: reservations a replica still holds, registered again in a new epoch.
/// One already known (live, marker or tombstone) is left alone, so running it twice
/// holds nothing twice. Cancels a running check of the account (it could not see them).
pub const REGISTER: &str = concat!(
    prologue!(),
    r#"
local expiry = int(now + tonumber(ARGV[3]))
local p = ARGV[4]
local added = 0
for i = 5, #ARGV, 4 do
  local acct, id, kid, amt = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if redis.call('HEXISTS', p .. 'rd:' .. acct, id) == 0 then
    redis.call('HSET', p .. 'rd:' .. acct, id, 'L ' .. kid .. ' ' .. amt)
    redis.call('ZADD', p .. 'r:' .. acct, expiry, id)
    redis.call('HINCRBY', p .. 'a:' .. acct, 'reserved', amt)
    redis.call('HINCRBY', p .. 'k:' .. kid, 'reserved', amt)
    redis.call('HDEL', p .. 'a:' .. acct, 'sync', 'sync_until')
    added = added + 1
  end
end
return {'ok', seq, tostring(added)}
"#
);

/// KEYS: epoch, account, sync log. ARGV: epoch, seen, sync id, mode (`load` or
/// `check`), check interval ms, sync window ms. Starts logging the account's settles.
pub const SYNC_BEGIN: &str = concat!(
    prologue!(),
    r#"
if now < tonumber(ep[3]) then return {'wait', seq, int(tonumber(ep[3]) - now)} end
local s = redis.call('HMGET', KEYS[2], 'sync_until', 'synced_at', 'granted')
if s[1] and tonumber(s[1]) >= now then return {'busy', seq} end
if ARGV[4] == 'check' and (not s[3] or (s[2] and tonumber(s[2]) + tonumber(ARGV[5]) > now)) then
  return {'skip', seq}
end
redis.call('HSET', KEYS[2], 'sync', ARGV[3], 'sync_until', int(now + tonumber(ARGV[6])))
redis.call('DEL', KEYS[3])
return {'ok', seq}
"#
);

/// KEYS: epoch, account, data, sync log. ARGV: epoch, seen, sync id. Answers the ids
/// whose place in the ledger the check must know: reservations, markers, logged settles.
pub const SYNC_READ: &str = concat!(
    prologue!(),
    r#"
if redis.call('HGET', KEYS[2], 'sync') ~= ARGV[3] then return {'lost', seq} end
local r = {'ok', seq}
for _, id in ipairs(redis.call('HKEYS', KEYS[3])) do r[#r + 1] = id end
for _, id in ipairs(redis.call('HKEYS', KEYS[4])) do r[#r + 1] = id end
return r
"#
);

/// KEYS: epoch, account, data, markers, sync log. ARGV: epoch, seen, sync id, key-hash
/// prefix, granted, ledger charged, n, then n (key, ledger usage, limit, load 0/1)
/// quads, then (request id, cost) pairs of the ids the ledger snapshot holds.
/// Sets charged and usage to what they must be and reserved to the live reservations;
/// answers `ok`, seq, whether the account was loaded, its drift, its reserved drift,
/// then (key, loaded, drift, reserved drift) per key.
pub const SYNC_APPLY: &str = concat!(
    prologue!(),
    r#"
local s = redis.call('HMGET', KEYS[2], 'sync', 'sync_until')
if s[1] ~= ARGV[3] or tonumber(s[2]) < now then return {'lost', seq} end
local keys, order = {}, {}
local n = tonumber(ARGV[7])
for i = 0, n - 1 do
  local b = 8 + i * 4
  keys[ARGV[b]] = {usage = tonumber(ARGV[b + 1]), limit = ARGV[b + 2], load = ARGV[b + 3] == '1', live = 0}
  order[#order + 1] = ARGV[b]
end
local committed = {}
for i = 8 + n * 4, #ARGV, 2 do committed[ARGV[i]] = tonumber(ARGV[i + 1]) end
local expected = tonumber(ARGV[6])
-- Settled since the check began but committed after the snapshot: the snapshot lacks them.
local logged = redis.call('HGETALL', KEYS[5])
for i = 1, #logged, 2 do
  if not committed[logged[i]] then
    local v = logged[i + 1]
    local sp = string.find(v, ' ', 1, true)
    local kid, cost = string.sub(v, 1, sp - 1), tonumber(string.sub(v, sp + 1))
    expected = expected + cost
    if keys[kid] then keys[kid].usage = keys[kid].usage + cost end
  end
end
local live = 0
local data = redis.call('HGETALL', KEYS[3])
for i = 1, #data, 2 do
  local id, d = data[i], data[i + 1]
  local st, kid, amt = parse(d)
  local c = committed[id]
  if st == 'l' or st == 'L' then
    live = live + amt
    if keys[kid] then keys[kid].live = keys[kid].live + amt end
    -- In the ledger already, its settle still to come: that settle will count it.
    if c then
      expected = expected - c
      if keys[kid] then keys[kid].usage = keys[kid].usage - c end
    end
  elseif c and st == 'x' then
    -- Its lease ran out after its charge reached the ledger: the ledger counts it,
    -- so a late settle must find nothing.
    redis.call('HDEL', KEYS[3], id)
    redis.call('ZREM', KEYS[4], id)
  elseif c and st == 'X' then
    redis.call('HSET', KEYS[3], id, 't ' .. kid .. ' 0')
  end
end
local a = redis.call('HMGET', KEYS[2], 'charged', 'reserved', 'granted')
local drift = expected - tonumber(a[1] or 0)
local rdrift = live - tonumber(a[2] or 0)
redis.call('HINCRBY', KEYS[2], 'charged', int(drift))
redis.call('HSET', KEYS[2], 'reserved', int(live), 'granted', ARGV[5], 'synced_at', int(now))
redis.call('HDEL', KEYS[2], 'sync', 'sync_until')
redis.call('DEL', KEYS[5])
local out = {'ok', seq, a[3] and '1' or '0', int(drift), int(rdrift)}
for _, kid in ipairs(order) do
  local k = keys[kid]
  local h = ARGV[4] .. kid
  local cur = redis.call('HMGET', h, 'usage', 'reserved', 'loaded')
  if cur[3] or k.load then
    local d = k.usage - tonumber(cur[1] or 0)
    redis.call('HINCRBY', h, 'usage', int(d))
    redis.call('HSET', h, 'reserved', int(k.live), 'loaded', '1')
    redis.call('HSETNX', h, 'limit', k.limit)
    out[#out + 1] = kid
    out[#out + 1] = cur[3] and '1' or '0'
    out[#out + 1] = int(d)
    out[#out + 1] = int(k.live - tonumber(cur[2] or 0))
  end
end
return out
"#
);

/// KEYS: epoch, account, sync log. ARGV: epoch, seen, sync id. Ends a check that failed.
pub const SYNC_END: &str = concat!(
    prologue!(),
    r#"
if redis.call('HGET', KEYS[2], 'sync') == ARGV[3] then
  redis.call('HDEL', KEYS[2], 'sync', 'sync_until')
  redis.call('DEL', KEYS[3])
end
return {'ok', seq}
"#
);

/// KEYS: a hash. ARGV: field, value, the field whose presence means "loaded".
pub const SET_IF_LOADED: &str = r#"
if redis.call('HEXISTS', KEYS[1], ARGV[3]) == 1 then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
"#;

/// A script's text with its constants filled in.
pub fn with_constants(script: &str, grace_ms: u64, marker_ttl_ms: u64) -> String {
    script
        .replace("GRACE_MS", &grace_ms.to_string())
        .replace("MARKER_TTL_MS", &marker_ttl_ms.to_string())
}

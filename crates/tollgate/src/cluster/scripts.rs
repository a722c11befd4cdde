//! The Lua scripts of the shared budgets: each shared change is one of them, so it is
//! atomic. docs/cluster.md explains the layout and why it stays right through faults.
//!
//! Layout (per epoch `E`, see `names.rs`): `tg2:epoch` (the current epoch),
//! `tg2:E:seq` (its write counter), `tg2:E:grace` (present during its grace window),
//! `tg2:E:a:<account>` (granted, charged, reserved, synced_at; `granted` present =
//! loaded), `tg2:E:k:<key>` (usage, limit, reserved; `loaded`), `tg2:E:r:<account>`
//! (leases), `tg2:E:rd:<account>` (reservation data and markers), `tg2:E:m:<account>`
//! (marker expiries), `tg2:E:sa:<account>` (the running sync's id, expiring with its
//! window) and `tg2:E:sl:<account>` (settles logged during that sync).
//!
//! Reservation data is `<state> <key> <amount>`: `l` live, `L` live and re-registered
//! after a data loss, `x`/`X` their lease ran out (amount given back; a late settle still
//! charges), `t` settled after being re-registered (a tombstone, so a replayed
//! registration cannot hold it again). A settle deletes an `l`/`x` entry, so a settle that
//! runs again finds nothing and counts nothing.
//!
//! A budget slice (an id starting `L:`, `slices.rs`) is a reservation that many requests
//! of one replica spend; the budgets count what slices hold in `sliced` as well. Its
//! lease running out does not give it back: what its requests spent is in the ledger but
//! not yet here, so it stays held (`y`/`Y`) until a check counts that (`z`/`Z <counted>`,
//! no longer held; a late settle adds its cost less what was counted).

/// The start of every budget script. KEYS[1] is the write counter of the epoch the caller
/// knows (`tg2:<epoch>:seq`), ARGV[1] that epoch and ARGV[2] the highest counter the
/// caller saw in it. One INCR is the whole check on the hot path: a legitimate counter
/// starts at 1,000,000 and only grows, so an answer of 1 means it was missing (Redis lost
/// its data, or the caller knows no epoch yet) and an answer not above what the caller saw
/// means Redis went back in time (or the epoch was retired). Then, if the marker
/// `tg2:epoch` names another epoch, the caller is told it; otherwise a new epoch starts,
/// with a grace window (`tg2:<epoch>:grace`), and the caller is told. Nothing else runs.
/// Defines `seq`, `clock`, `int` and `parse`.
macro_rules! prologue {
    () => {
        r#"
local function int(x) return string.format('%.0f', x) end
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function parse(d)
  local sp = string.find(d, ' ', 3, true)
  return string.sub(d, 1, 1), string.sub(d, 3, sp - 1), tonumber(string.sub(d, sp + 1))
end
local seq = redis.call('INCR', KEYS[1])
if seq == 1 or seq <= tonumber(ARGV[2]) then
  if seq == 1 then redis.call('DEL', KEYS[1]) end
  local cur = redis.call('GET', 'tg2:epoch')
  if cur and cur ~= ARGV[1] then
    return {'epoch', '0', cur, tostring(math.max(0, redis.call('PTTL', 'tg2:' .. cur .. ':grace')))}
  end
  if seq ~= 1 then redis.call('SET', KEYS[1], '-1000000000000000') end
  local t = redis.call('TIME')
  local id = t[1] .. string.format('%06d', tonumber(t[2]))
  redis.call('SET', 'tg2:epoch', id)
  redis.call('SET', 'tg2:' .. id .. ':seq', 1000000)
  redis.call('SET', 'tg2:' .. id .. ':grace', 1, 'PX', GRACE_MS)
  return {'epoch', '0', id, 'GRACE_MS'}
end
seq = tostring(seq)
"#
    };
}

/// KEYS: counter, account, key budget, leases, data, markers. ARGV: epoch, seen,
/// lease_ms, id, amount, key budget name (`17`, or `17@d2027-01-31` for a window),
/// key-hash prefix. (No grace check: during an epoch's grace window no
/// budget is loaded yet, and an unloaded one answers `load`.) Every answer but `epoch`
/// has, after the counter, `1` if a slice's lease ran out (its account's check is then
/// due at once) or `0`; `ok` then the room left after it (the least of the key's and the
/// account's); a refusal what is left and what slices hold of the budget that refused.
pub const RESERVE: &str = concat!(
    prologue!(),
    r#"
local now = clock()
-- Leases that ran out give their amount back; a marker remembers them for a late settle.
local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 256)
local check = '0'
for _, id in ipairs(expired) do
  local d = redis.call('HGET', KEYS[5], id)
  if d then
    local s, kid, amt = parse(d)
    if (s == 'l' or s == 'L') and string.sub(id, 1, 2) == 'L:' then
      -- A slice stays held until the account's check (asked for at once) counts its spend.
      redis.call('HSET', KEYS[5], id, (s == 'L' and 'Y' or 'y') .. string.sub(d, 2))
      redis.call('HSET', KEYS[2], 'synced_at', 0)
      check = '1'
    elseif s == 'l' or s == 'L' then
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
local a = redis.call('HMGET', KEYS[2], 'granted', 'charged', 'reserved', 'sliced')
local k = redis.call('HMGET', KEYS[3], 'usage', 'limit', 'reserved', 'loaded', 'sliced')
if not a[1] or not k[4] then return {'load', seq, check} end
local amount = tonumber(ARGV[5])
local available = tonumber(a[1]) - tonumber(a[2] or 0) - tonumber(a[3] or 0)
local room = available
if k[2] ~= 'none' then
  local remaining = tonumber(k[2]) - tonumber(k[1] or 0) - tonumber(k[3] or 0)
  if amount > remaining then return {'key', seq, check, k[2], int(remaining), k[5] or '0'} end
  room = math.min(room, remaining)
end
if amount > available then return {'balance', seq, check, int(available), a[4] or '0'} end
redis.call('HINCRBY', KEYS[2], 'reserved', ARGV[5])
redis.call('HINCRBY', KEYS[3], 'reserved', ARGV[5])
if string.sub(ARGV[4], 1, 2) == 'L:' then
  redis.call('HINCRBY', KEYS[2], 'sliced', ARGV[5])
  redis.call('HINCRBY', KEYS[3], 'sliced', ARGV[5])
end
redis.call('ZADD', KEYS[4], int(now + tonumber(ARGV[3])), ARGV[4])
redis.call('HSET', KEYS[5], ARGV[4], 'l ' .. ARGV[6] .. ' ' .. ARGV[5])
return {'ok', seq, check, int(room - amount)}
"#
);

/// KEYS: counter, account, key, leases, data, markers, sync flag, sync log. ARGV: epoch,
/// seen, id, cost. Counts the cost once: a settle that finds no reservation (it ran
/// before) is a no-op answered `dup`. A settle logged during a sync logs the whole cost.
pub const SETTLE: &str = concat!(
    prologue!(),
    r#"
local d = redis.call('HGET', KEYS[5], ARGV[3])
if not d or string.sub(d, 1, 1) == 't' then return {'dup', seq} end
local s, kid, amt = parse(d)
local has_key = redis.call('EXISTS', KEYS[3]) == 1
local cost = ARGV[4]
if s == 'l' or s == 'L' or s == 'y' or s == 'Y' then
  redis.call('HINCRBY', KEYS[2], 'reserved', int(-amt))
  if has_key then redis.call('HINCRBY', KEYS[3], 'reserved', int(-amt)) end
  if string.sub(ARGV[3], 1, 2) == 'L:' then
    redis.call('HINCRBY', KEYS[2], 'sliced', int(-amt))
    if has_key then redis.call('HINCRBY', KEYS[3], 'sliced', int(-amt)) end
  end
  redis.call('ZREM', KEYS[4], ARGV[3])
else
  -- A slice a check counted (`z`): only what the check did not count is new.
  if s == 'z' or s == 'Z' then cost = int(tonumber(cost) - amt) end
  redis.call('ZREM', KEYS[6], ARGV[3])
end
if s == 'L' or s == 'X' or s == 'Y' or s == 'Z' then
  redis.call('HSET', KEYS[5], ARGV[3], 't ' .. kid .. ' 0')
  redis.call('ZADD', KEYS[6], int(clock() + MARKER_TTL_MS), ARGV[3])
else
  redis.call('HDEL', KEYS[5], ARGV[3])
end
redis.call('HINCRBY', KEYS[2], 'charged', cost)
if has_key then redis.call('HINCRBY', KEYS[3], 'usage', cost) end
if redis.call('EXISTS', KEYS[7]) == 1 then
  redis.call('HSET', KEYS[8], ARGV[3], kid .. ' ' .. ARGV[4])
end
return {'ok', seq}
"#
);

/// KEYS: counter. ARGV: epoch, seen, lease_ms, epoch prefix, then (account, id) pairs.
/// Extends the leases still held (never shortens one); answers how many ran out (their
/// data marked `x`/`X`). A reservation settled since the replica listed its pairs has no
/// lease either, but is not lost: it is not counted.
/// With no pairs it is the heartbeat that notices a new epoch.
pub const RENEW: &str = concat!(
    prologue!(),
    r#"
local expiry = int(clock() + tonumber(ARGV[3]))
local lost = 0
for i = 5, #ARGV, 2 do
  local z = ARGV[4] .. 'r:' .. ARGV[i]
  if redis.call('ZSCORE', z, ARGV[i + 1]) then
    redis.call('ZADD', z, 'XX', 'GT', expiry, ARGV[i + 1])
  else
    local d = redis.call('HGET', ARGV[4] .. 'rd:' .. ARGV[i], ARGV[i + 1])
    local s = d and string.sub(d, 1, 1)
    if s and string.find('xXyYzZ', s, 1, true) then lost = lost + 1 end
  end
end
return {'ok', seq, tostring(lost)}
"#
);

/// KEYS: counter. ARGV: epoch, seen, lease_ms, epoch prefix, then (account, id, key,
/// amount) quads: reservations a replica still holds, registered again in a new epoch.
/// One already known (live, marker or tombstone) is left alone, so running it twice
/// holds nothing twice. Cancels a running sync of the account (it could not see them).
pub const REGISTER: &str = concat!(
    prologue!(),
    r#"
local expiry = int(clock() + tonumber(ARGV[3]))
local p = ARGV[4]
local added = 0
for i = 5, #ARGV, 4 do
  local acct, id, kid, amt = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if redis.call('HEXISTS', p .. 'rd:' .. acct, id) == 0 then
    redis.call('HSET', p .. 'rd:' .. acct, id, 'L ' .. kid .. ' ' .. amt)
    redis.call('ZADD', p .. 'r:' .. acct, expiry, id)
    redis.call('HINCRBY', p .. 'a:' .. acct, 'reserved', amt)
    redis.call('HINCRBY', p .. 'k:' .. kid, 'reserved', amt)
    if string.sub(id, 1, 2) == 'L:' then
      redis.call('HINCRBY', p .. 'a:' .. acct, 'sliced', amt)
      redis.call('HINCRBY', p .. 'k:' .. kid, 'sliced', amt)
    end
    redis.call('DEL', p .. 'sa:' .. acct)
    added = added + 1
  end
end
return {'ok', seq, tostring(added)}
"#
);

/// KEYS: counter, account, sync flag, sync log. ARGV: epoch, seen, sync id, mode (`load`
/// or `check`), check interval ms, sync window ms. Takes the account's sync lock (the
/// flag, which also tells settles to log themselves) and starts an empty log.
pub const SYNC_BEGIN: &str = concat!(
    prologue!(),
    r#"
local grace = redis.call('PTTL', 'tg2:' .. ARGV[1] .. ':grace')
if grace > 0 then return {'wait', seq, tostring(grace)} end
local now = clock()
local s = redis.call('HMGET', KEYS[2], 'synced_at', 'granted')
if ARGV[4] == 'check' and (not s[2] or (s[1] and tonumber(s[1]) + tonumber(ARGV[5]) > now)) then
  return {'skip', seq}
end
if not redis.call('SET', KEYS[3], ARGV[3], 'NX', 'PX', ARGV[6]) then return {'busy', seq} end
redis.call('DEL', KEYS[4])
return {'ok', seq}
"#
);

/// KEYS: counter, sync flag, data, sync log. ARGV: epoch, seen, sync id. Answers the
/// ids whose place in the ledger the sync must know: reservations, markers, logged settles.
pub const SYNC_READ: &str = concat!(
    prologue!(),
    r#"
if redis.call('GET', KEYS[2]) ~= ARGV[3] then return {'lost', seq} end
local r = {'ok', seq}
for _, id in ipairs(redis.call('HKEYS', KEYS[3])) do r[#r + 1] = id end
for _, id in ipairs(redis.call('HKEYS', KEYS[4])) do r[#r + 1] = id end
return r
"#
);

/// KEYS: counter, account, data, markers, sync log, sync flag. ARGV: epoch, seen, sync
/// id, key-hash prefix, granted, ledger charged, first (1: set the account too), last (1:
/// end the sync), n, then n (key, ledger usage, limit, load 0/1) quads, then (request id,
/// cost) pairs of the ids the ledger snapshot holds.
/// Sets charged and usage to what they must be and reserved to the live reservations;
/// answers `ok`, seq, whether the account was loaded, its drift, its reserved drift (`0`,
/// 0, 0 when not `first`), then (key, loaded, drift, reserved drift) per key.
///
/// A sync of many keys runs this once per chunk of them (`sync::CHUNK_KEYS`), so Redis is
/// never held for long. Each chunk computes its keys from the settle log and the data as
/// they are when it runs: the sync flag stays up, so every settle since the sync began is
/// in the log and in the counters alike, and the snapshot's answers cover every id that
/// was in flight when it was read (any later one reached the ledger after the snapshot).
pub const SYNC_APPLY: &str = concat!(
    prologue!(),
    r#"
if redis.call('GET', KEYS[6]) ~= ARGV[3] then return {'lost', seq} end
local first, last = ARGV[7] == '1', ARGV[8] == '1'
local keys, order = {}, {}
local n = tonumber(ARGV[9])
for i = 0, n - 1 do
  local b = 10 + i * 4
  keys[ARGV[b]] = {usage = tonumber(ARGV[b + 1]), limit = ARGV[b + 2], load = ARGV[b + 3] == '1', live = 0, sliced = 0}
  order[#order + 1] = ARGV[b]
end
local committed = {}
for i = 10 + n * 4, #ARGV, 2 do committed[ARGV[i]] = tonumber(ARGV[i + 1]) end
-- Markers past their time go (here, not on the hot path: there are few of them).
if first then
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', clock(), 'LIMIT', 0, 1000)) do
    redis.call('HDEL', KEYS[3], id)
    redis.call('ZREM', KEYS[4], id)
  end
end
local expected = tonumber(ARGV[6])
-- Settled since the check began: what of their cost the snapshot lacks (all of it for a
-- request committed after the snapshot, none for one committed before; for a slice, its
-- records committed after the snapshot).
local logged = redis.call('HGETALL', KEYS[5])
for i = 1, #logged, 2 do
  local v = logged[i + 1]
  local sp = string.find(v, ' ', 1, true)
  local kid = string.sub(v, 1, sp - 1)
  local cost = tonumber(string.sub(v, sp + 1)) - (committed[logged[i]] or 0)
  expected = expected + cost
  if keys[kid] then keys[kid].usage = keys[kid].usage + cost end
end
local live, sliced = 0, 0
local data = redis.call('HGETALL', KEYS[3])
for i = 1, #data, 2 do
  local id, d = data[i], data[i + 1]
  local st, kid, amt = parse(d)
  local c = committed[id]
  if st == 'l' or st == 'L' then
    live = live + amt
    if keys[kid] then keys[kid].live = keys[kid].live + amt end
    if string.sub(id, 1, 2) == 'L:' then
      sliced = sliced + amt
      if keys[kid] then keys[kid].sliced = keys[kid].sliced + amt end
    end
    -- In the ledger already (a slice: in part), its settle still to come: that settle
    -- will count it.
    if c then
      expected = expected - c
      if keys[kid] then keys[kid].usage = keys[kid].usage - c end
    end
  elseif not first then
    -- The markers are the first chunk's.
  elseif st == 'y' or st == 'Y' or st == 'z' or st == 'Z' then
    -- A slice whose lease ran out: what it committed so far is counted now (moved into
    -- charged and usage, so it is no drift) and it is held no longer (`y`); its owner,
    -- if only frozen, settles later and adds what was not counted.
    local held = st == 'y' or st == 'Y'
    local add = int((c or 0) - (held and 0 or amt))
    local h = ARGV[4] .. kid
    redis.call('HINCRBY', KEYS[2], 'charged', add)
    if held then
      redis.call('HINCRBY', KEYS[2], 'reserved', int(-amt))
      redis.call('HINCRBY', KEYS[2], 'sliced', int(-amt))
    end
    if redis.call('EXISTS', h) == 1 then
      redis.call('HINCRBY', h, 'usage', add)
      if held then
        redis.call('HINCRBY', h, 'reserved', int(-amt))
        redis.call('HINCRBY', h, 'sliced', int(-amt))
      end
    end
    redis.call('HSET', KEYS[3], id, ((st == 'Y' or st == 'Z') and 'Z ' or 'z ') .. kid .. ' ' .. int(c or 0))
    redis.call('ZADD', KEYS[4], int(clock() + MARKER_TTL_MS), id)
  elseif c and st == 'x' then
    -- Its lease ran out after its charge reached the ledger: the ledger counts it,
    -- so a late settle must find nothing.
    redis.call('HDEL', KEYS[3], id)
    redis.call('ZREM', KEYS[4], id)
  elseif c and st == 'X' then
    redis.call('HSET', KEYS[3], id, 't ' .. kid .. ' 0')
  end
end
local out = {'ok', seq, '0', '0', '0'}
if first then
  local a = redis.call('HMGET', KEYS[2], 'charged', 'reserved', 'granted')
  local drift = expected - tonumber(a[1] or 0)
  local rdrift = live - tonumber(a[2] or 0)
  redis.call('HINCRBY', KEYS[2], 'charged', int(drift))
  redis.call('HSET', KEYS[2], 'reserved', int(live), 'sliced', int(sliced), 'granted', ARGV[5], 'synced_at', int(clock()))
  out = {'ok', seq, a[3] and '1' or '0', int(drift), int(rdrift)}
end
if last then redis.call('DEL', KEYS[5], KEYS[6]) end
for _, kid in ipairs(order) do
  local k = keys[kid]
  local h = ARGV[4] .. kid
  local cur = redis.call('HMGET', h, 'usage', 'reserved', 'loaded')
  if cur[3] or k.load then
    local d = k.usage - tonumber(cur[1] or 0)
    redis.call('HINCRBY', h, 'usage', int(d))
    redis.call('HSET', h, 'reserved', int(k.live), 'sliced', int(k.sliced), 'loaded', '1')
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

/// KEYS: counter, sync flag, sync log. ARGV: epoch, seen, sync id. Ends a sync that
/// failed (its flag would otherwise expire with its window).
pub const SYNC_END: &str = concat!(
    prologue!(),
    r#"
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2], KEYS[3]) end
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

//! Lua scripts run atomically in Redis, on Redis's own clock (`TIME`), so replicas with skewed
//! clocks still agree.

use redis::Script;

/// Claims the next mutation slot. KEYS[1] next-slot ms; ARGV[1] pace ms, ARGV[2] longest wait ms.
/// Returns the wait in ms, or minus the wait when it is longer than allowed (nothing claimed).
const PACE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local next = tonumber(redis.call('GET', KEYS[1]) or '0')
if next < now then next = now end
local wait = next - now
if wait > tonumber(ARGV[2]) then return -wait end
redis.call('SET', KEYS[1], next + tonumber(ARGV[1]), 'PX', 3600000)
return wait
";

/// Gives a claimed slot back (its call was not sent): KEYS[1] next-slot ms moves back by ARGV[1]
/// pace ms, never before now. Sends stay `pace` apart through SEND whatever the slots say.
const UNPACE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local next = tonumber(redis.call('GET', KEYS[1]) or '0')
if next <= now then return 0 end
local back = next - tonumber(ARGV[1])
if back < now then back = now end
redis.call('SET', KEYS[1], back, 'PX', 3600000)
return 1
";

/// A send's turn: KEYS[1] last-send ms, KEYS[2] the turn held, KEYS[3] the last send before
/// the turn; ARGV[1] pace ms, ARGV[2] lease ms, ARGV[3] the turn's name (the caller's: one whose
/// answer never came can still be ended by it). When at least `pace` passed since the last
/// send, takes the turn: keeps the last send in KEYS[3] (for RELEASE_TURN), records a send
/// `lease` ms ahead (so nobody else's turn comes while this one checks and sends) and returns
/// {0, 1}; else returns {the ms still to wait, 0}. A predecessor that sent late pushes its
/// successors back, so sends, not just slots, stay `pace` apart.
const SEND: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last = tonumber(redis.call('GET', KEYS[1]))
if last == nil then
  -- Lost (a flush, a restart without persistence): another replica may have sent a moment
  -- ago, so the pace counts from now.
  redis.call('SET', KEYS[1], now, 'PX', 3600000)
  return {tonumber(ARGV[1]), 0}
end
local due = last + tonumber(ARGV[1])
if now < due then return {due - now, 0} end
redis.call('SET', KEYS[3], last, 'PX', 3600000 + tonumber(ARGV[2]))
redis.call('SET', KEYS[1], now + tonumber(ARGV[2]), 'PX', 3600000 + tonumber(ARGV[2]))
redis.call('SET', KEYS[2], ARGV[3], 'PX', 3600000 + tonumber(ARGV[2]))
return {0, 1}
";

/// How long until the next send turn is due: KEYS[1] last-send ms; ARGV[1] pace ms. 0: now. A
/// lost record (a flush) is taken for a send now, as SEND takes it.
const TURN_DUE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last = tonumber(redis.call('GET', KEYS[1]))
if last == nil then
  redis.call('SET', KEYS[1], now, 'PX', 3600000)
  return tonumber(ARGV[1])
end
local due = last + tonumber(ARGV[1])
if now < due then return due - now end
return 0
";

/// Extends a turn SEND gave: KEYS[1] last-send ms, KEYS[2] the turn held; ARGV[1] the turn's
/// name, ARGV[2] lease ms. While the turn is still this one's, moves its lease to now + ARGV[2]
/// and returns 1 (its name stays: a renewal whose answer never came renames nothing); a turn
/// that lapsed and was given again returns 0.
const RENEW_TURN: &str = r"
if tonumber(redis.call('GET', KEYS[2]) or '0') ~= tonumber(ARGV[1]) then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[1], now + tonumber(ARGV[2]), 'PX', 3600000 + tonumber(ARGV[2]))
return 1
";

/// Ends a turn SEND gave: KEYS[1] last-send ms, KEYS[2] the turn held (KEYS[3], the last send
/// before the turn, is not read); ARGV[1] the turn's name.
/// While the turn is still this one's, records the send now and returns 1; a turn that lapsed
/// and was given again returns 0 and records nothing.
const SENT: &str = r"
if tonumber(redis.call('GET', KEYS[2]) or '0') ~= tonumber(ARGV[1]) then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[1], now, 'PX', 3600000)
redis.call('SET', KEYS[2], -1, 'PX', 3600000)
return 1
";

/// Ends a turn SEND gave without a send (its call was not sent): KEYS[1] last-send ms, KEYS[2]
/// the turn held, KEYS[3] the last send before the turn; ARGV[1] the turn's name. While the turn
/// is still this one's, puts the last send back to what it was before the turn (the next turn
/// is due `pace` after the last real send) and returns 1; a turn that lapsed and was given
/// again returns 0 and changes nothing. A record lost meanwhile (a flush) counts as a send now,
/// as SEND counts it.
const RELEASE_TURN: &str = r"
if tonumber(redis.call('GET', KEYS[2]) or '0') ~= tonumber(ARGV[1]) then return 0 end
local before = redis.call('GET', KEYS[3])
if not before then
  local t = redis.call('TIME')
  before = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
redis.call('SET', KEYS[1], before, 'PX', 3600000)
redis.call('SET', KEYS[2], -1, 'PX', 3600000)
return 1
";

/// Takes ARGV[3] (1, 0 to read, -1 to give one back) tokens from a bucket of ARGV[1] per ARGV[2] ms. KEYS[1] hash
/// {tokens, ts}. Returns {taken 0|1, remaining, full-at epoch ms, retry-after ms}; a cost of 0
/// reads the bucket without spending.
const BUCKET: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local capacity = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local rate = capacity / window
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or capacity
local ts = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + (now - ts) * rate)
local taken = 0
if tokens >= cost then tokens = math.min(capacity, tokens - cost); taken = 1 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], window * 2)
local full_at = now + math.ceil((capacity - tokens) / rate)
local retry = 0
if taken == 0 then retry = math.ceil((1 - tokens) / rate) end
return {taken, math.floor(tokens), full_at, retry}
";

/// Puts back calls a replica made before Redis lost the bucket KEYS[1] (a flush, a restart
/// without persistence): ARGV[3] tokens come off a bucket of ARGV[1] per ARGV[2] ms, whatever it
/// holds (never below zero). Same layout as BUCKET.
const DEBIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local capacity = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local rate = capacity / window
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or capacity
local ts = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + (now - ts) * rate)
tokens = math.max(0, tokens - tonumber(ARGV[3]))
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], window * 2)
return math.floor(tokens)
";

/// Puts back a send a replica made before Redis lost KEYS[1] (last-send ms): it happened ARGV[1]
/// ms ago by the replica's clock, so it is recorded then by Redis's, unless a later one is.
const SENT_AGO: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local at = now - tonumber(ARGV[1])
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if at <= last then return 0 end
redis.call('SET', KEYS[1], at, 'PX', 3600000)
return 1
";

/// Bumps generation ARGV[1] in hash KEYS[1] past ARGV[2], the value the bumping replica holds:
/// a table Redis lost or rolled back (a flush, an older snapshot) must never hand out a number a
/// replica already used, or the bump invalidates nothing there. Returns the new value.
const BUMP: &str = r"
local v = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
local floor = tonumber(ARGV[2])
if v <= floor then
  v = floor + 1
  redis.call('HSET', KEYS[1], ARGV[1], v)
end
return v
";

/// Raises generation ARGV[1] in hash KEYS[1] to ARGV[2] if it is lower. Returns 1 if raised.
const RAISE: &str = r"
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if cur < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0
";

/// Deletes KEYS[1] only while it holds ARGV[1] (the holder's token). Returns 1 if deleted.
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Extends KEYS[1] to ARGV[2] ms only while it holds ARGV[1]. Returns 1 if extended.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
";

/// The loaded scripts (hashed once; `EVALSHA` with a fallback to `EVAL`).
pub(super) struct Scripts {
    pub(super) pace: Script,
    pub(super) send: Script,
    pub(super) sent: Script,
    pub(super) release_turn: Script,
    pub(super) renew_turn: Script,
    pub(super) turn_due: Script,
    pub(super) bucket: Script,
    pub(super) unlock: Script,
    pub(super) renew: Script,
    pub(super) bump: Script,
    pub(super) raise: Script,
    pub(super) unpace: Script,
    pub(super) debit: Script,
    pub(super) sent_ago: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Self {
            pace: Script::new(PACE),
            send: Script::new(SEND),
            sent: Script::new(SENT),
            release_turn: Script::new(RELEASE_TURN),
            renew_turn: Script::new(RENEW_TURN),
            turn_due: Script::new(TURN_DUE),
            bucket: Script::new(BUCKET),
            unlock: Script::new(UNLOCK),
            renew: Script::new(RENEW),
            bump: Script::new(BUMP),
            raise: Script::new(RAISE),
            unpace: Script::new(UNPACE),
            debit: Script::new(DEBIT),
            sent_ago: Script::new(SENT_AGO),
        }
    }
}

//! The Lua scripts the cluster runs in Redis, each one atomic and one round trip, and what
//! their answers mean. Every time is Redis's own (`TIME`), so replicas whose clocks differ
//! still agree.

use std::time::Duration;

/// The replica's heartbeat: announce it, list the live replicas, read the shared breakers.
/// KEYS: the replica's key, the index of replicas, the breakers hash. ARGV: the replica's id,
/// the key's expiry (ms), the replica keys' common start. Returns
/// `{now_ms, {live ids}, {profile, "epoch:until_ms", ...}}`.
pub(super) const HEARTBEAT: &str = r"
redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[2], 60000)
local live = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if redis.call('EXISTS', ARGV[3] .. id) == 1 then
    table.insert(live, id)
  else
    redis.call('SREM', KEYS[2], id)
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {now, live, redis.call('HGETALL', KEYS[3])}
";

/// GCRA (the generic cell rate algorithm), as a token bucket of `burst` that refills one
/// token per `interval`. KEYS: the profile's rate key (its theoretical arrival time, µs).
/// ARGV: interval (µs), tolerance (µs: the burst less one interval, see
/// [`super::share::tolerance`]), the longest wait (µs) the caller would wait for its turn.
/// An attempt allowed now, or within that wait, is booked at once: `{1, wait_us}`, and the
/// caller attempts after `wait_us` with no second round trip. Otherwise nothing is booked:
/// `{0, wait_us}`.
pub(super) const RATE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait < 0 then wait = 0 end
if wait > 0 and wait >= tonumber(ARGV[3]) then return {0, wait} end
local later = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', later), 'PX', math.floor((later - now) / 1000) + 1000)
return {1, wait}
";

/// Shared by the breaker scripts: the breakers hash holds, per profile, `epoch:until_ms`,
/// `until_ms` 0 while closed. The epoch grows at every change, so a replica can tell news
/// from what it already knows. Each returns `{epoch, open (0/1), left_ms, flag}`.
const BREAKER_COMMON: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function read(profile)
  local v = redis.call('HGET', KEYS[1], profile)
  if not v then return 0, 0 end
  local e, u = string.match(v, '^(%d+):(%d+)$')
  return tonumber(e), tonumber(u)
end
local function write(profile, e, u)
  redis.call('HSET', KEYS[1], profile, string.format('%.0f:%.0f', e, u))
  redis.call('PEXPIRE', KEYS[1], 604800000)
end
";

/// A non-probe attempt's result. KEYS: breakers hash, the profile's failure count. ARGV:
/// profile, `down` or `up`, failures that open it, open_for (ms), `1` if this replica's own
/// count opened it already. Counts consecutive failures across replicas (a success reported
/// by a replica that reported failures resets it); the failure that reaches the threshold
/// opens the breaker for everyone (flag 1). While it is open, results count no more.
pub(super) fn report() -> String {
    format!(
        "{BREAKER_COMMON}{}",
        r"
local now = now_ms()
local e, u = read(ARGV[1])
if u > 0 then return {e, 1, u - now, 0} end
if ARGV[2] == 'up' then
  redis.call('DEL', KEYS[2])
  return {e, 0, 0, 0}
end
local n = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], 3600000)
if n >= tonumber(ARGV[3]) or ARGV[5] == '1' then
  write(ARGV[1], e + 1, now + tonumber(ARGV[4]))
  redis.call('DEL', KEYS[2])
  return {e + 1, 1, tonumber(ARGV[4]), 1}
end
return {e, 0, 0, 0}
"
    )
}

/// Ask to be the deployment's one probe. KEYS: breakers hash, the profile's probe key.
/// ARGV: profile, the probe's lease (ms), this replica's id. Flag 1: the probe is yours;
/// flag 2: another replica's probe is out (left = its lease left); else the breaker is
/// closed, or open for `left` more.
pub(super) fn take_probe() -> String {
    format!(
        "{BREAKER_COMMON}{}",
        r"
local now = now_ms()
local e, u = read(ARGV[1])
if u == 0 then return {e, 0, 0, 0} end
if now < u then return {e, 1, u - now, 0} end
if redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[2]) then return {e, 1, 0, 1} end
return {e, 1, redis.call('PTTL', KEYS[2]), 2}
"
    )
}

/// The probe's result. KEYS: breakers hash, probe key, failure count. ARGV: profile, `up`,
/// `down` or `unknown`, open_for (ms), this replica's id. `up` closes the breaker for
/// everyone, `down` opens it again for open_for; `unknown` only hands the probe back.
pub(super) fn probe_result() -> String {
    format!(
        "{BREAKER_COMMON}{}",
        r"
local now = now_ms()
local e, u = read(ARGV[1])
if redis.call('GET', KEYS[2]) == ARGV[4] then redis.call('DEL', KEYS[2]) end
if u == 0 then return {e, 0, 0, 0} end
if ARGV[2] == 'up' then
  write(ARGV[1], e + 1, 0)
  redis.call('DEL', KEYS[3])
  return {e + 1, 0, 0, 1}
end
if ARGV[2] == 'down' then
  write(ARGV[1], e + 1, now + tonumber(ARGV[3]))
  return {e + 1, 1, tonumber(ARGV[3]), 1}
end
return {e, 1, u - now, 0}
"
    )
}

/// A profile's breaker as the deployment holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerState {
    /// Grows at every change.
    pub epoch: u64,
    /// `Some(left)` while open, `left` zero once a probe is due; `None` while closed.
    pub open: Option<Duration>,
}

impl BreakerState {
    pub(super) fn from_reply(epoch: i64, open: i64, left_ms: i64) -> Self {
        BreakerState {
            epoch: u64::try_from(epoch).unwrap_or(0),
            open: (open == 1).then(|| Duration::from_millis(u64::try_from(left_ms).unwrap_or(0))),
        }
    }

    /// From the breakers hash: `epoch:until_ms`, read at Redis time `now_ms`.
    pub(super) fn from_field(value: &str, now_ms: i64) -> Option<Self> {
        let (epoch, until) = value.split_once(':')?;
        let (epoch, until): (i64, i64) = (epoch.parse().ok()?, until.parse().ok()?);
        Some(Self::from_reply(
            epoch,
            i64::from(until > 0),
            until.saturating_sub(now_ms),
        ))
    }
}

/// The answer to a failure or success report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub state: BreakerState,
    /// This report's failure is the one that opened it.
    pub opened: bool,
}

/// The answer to "may this replica probe?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeAnswer {
    /// Yes: the one probe of the deployment.
    Yours,
    /// No: another replica's probe is out, for at most this much longer.
    Elsewhere(Duration),
    /// No: the breaker is closed (another replica's probe succeeded), or open a while more.
    State(BreakerState),
}

impl ProbeAnswer {
    pub(super) fn from_reply((epoch, open, left, flag): (i64, i64, i64, i64)) -> Self {
        match flag {
            1 => ProbeAnswer::Yours,
            2 => ProbeAnswer::Elsewhere(Duration::from_millis(u64::try_from(left).unwrap_or(0))),
            _ => ProbeAnswer::State(BreakerState::from_reply(epoch, open, left)),
        }
    }
}

/// The answer of the deployment's rate limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateAnswer {
    /// Booked: attempt after this wait (zero: now).
    Booked(Duration),
    /// Not booked: the turn is this far away, beyond what the caller would wait.
    Over(Duration),
}

impl RateAnswer {
    pub(super) fn from_reply((booked, wait_us): (i64, i64)) -> Self {
        let wait = Duration::from_micros(u64::try_from(wait_us).unwrap_or(0));
        if booked == 1 {
            RateAnswer::Booked(wait)
        } else {
            RateAnswer::Over(wait)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_read_as_meant() {
        let ms = Duration::from_millis;
        assert_eq!(
            BreakerState::from_field("3:10500", 10_000),
            Some(BreakerState {
                epoch: 3,
                open: Some(ms(500))
            })
        );
        assert_eq!(
            BreakerState::from_field("4:9000", 10_000),
            Some(BreakerState {
                epoch: 4,
                open: Some(ms(0))
            }),
            "past its time: open, a probe due"
        );
        assert_eq!(
            BreakerState::from_field("5:0", 10_000),
            Some(BreakerState {
                epoch: 5,
                open: None
            })
        );
        assert_eq!(BreakerState::from_field("junk", 0), None);
        assert_eq!(ProbeAnswer::from_reply((2, 1, 0, 1)), ProbeAnswer::Yours);
        assert_eq!(
            ProbeAnswer::from_reply((2, 1, 700, 2)),
            ProbeAnswer::Elsewhere(ms(700))
        );
        assert_eq!(
            ProbeAnswer::from_reply((3, 0, 0, 0)),
            ProbeAnswer::State(BreakerState {
                epoch: 3,
                open: None
            })
        );
        assert_eq!(
            RateAnswer::from_reply((1, 0)),
            RateAnswer::Booked(Duration::ZERO)
        );
        assert_eq!(
            RateAnswer::from_reply((0, 1_500_000)),
            RateAnswer::Over(ms(1500))
        );
    }
}

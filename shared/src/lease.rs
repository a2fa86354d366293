//! Batch leases and idempotency keys in Redis.
//!
//! A lease (`<ns>:lease:<run>:<batch>`) is taken with `SET NX PX` (by
//! [`Leases::begin`], with the idempotency key and the run's gate in the same
//! round trip), kept alive by [`Leases::extend`] and given back by
//! [`Leases::finish`]; both compare the holder before touching the key, so a
//! worker whose lease expired cannot extend or delete the next holder's. The lease only keeps two workers from doing the same work at
//! once: correctness rests on the fencing token checked inside the warehouse
//! transaction. An idempotency key (`<ns>:done:<run>:<batch>`) remembers that a
//! batch's event was published, so a redelivery is acked at once.

use redis::Script;
use redis::aio::ConnectionManager;
use std::time::Duration;
use uuid::Uuid;

pub type Result<T, E = redis::RedisError> = std::result::Result<T, E>;

const EXTEND: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// Before a batch, in one round trip: its idempotency key, then the run's gate
/// (KEYS[2], written by `run_gate`), then the lease if the gate says go.
const BEGIN: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return {'done'} end
local gate = redis.call('GET', KEYS[2])
if not gate then return {'nogate'} end
if gate ~= 'go' then return {'gate', gate} end
if redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[2]) then return {'acquired'} end
return {'busy'}";

/// After a batch, in one round trip: its idempotency key when its event is out
/// (ARGV[2] is then the key's lifetime), and the lease given back if still held.
const FINISH: &str = r"
if ARGV[2] ~= '0' then redis.call('SET', KEYS[1], '1', 'EX', ARGV[2]) end
if redis.call('GET', KEYS[2]) == ARGV[1] then return redis.call('DEL', KEYS[2]) end
return 0";

/// What [`Leases::begin`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// The batch's event was published already.
    Done,
    /// The gate said go and `holder` now holds the lease.
    Acquired,
    /// The gate said go; another worker holds the lease.
    Busy,
    /// The gate's cached text when it is not `go`, `None` when none is cached.
    Gate(Option<String>),
}

/// How long an idempotency key is remembered.
const DONE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Clone)]
pub struct Leases {
    conn: ConnectionManager,
    namespace: String,
    ttl: Duration,
    extend: Script,
    begin: Script,
    finish: Script,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases")
            .field("namespace", &self.namespace)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Leases {
    #[must_use]
    pub fn new(conn: ConnectionManager, namespace: &str, ttl: Duration) -> Self {
        Self {
            conn,
            namespace: namespace.to_owned(),
            ttl,
            extend: Script::new(EXTEND),
            begin: Script::new(BEGIN),
            finish: Script::new(FINISH),
        }
    }

    #[must_use]
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn lease_key(&self, run: Uuid, batch: u32) -> String {
        format!("{}:lease:{run}:{batch}", self.namespace)
    }

    fn done_key(&self, run: Uuid, batch: u32) -> String {
        format!("{}:done:{run}:{batch}", self.namespace)
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// Before starting a batch: done already? what does the run's gate (at
    /// `gate_key`) say? and if it says go, takes the lease — one round trip.
    pub async fn begin(
        &self,
        run: Uuid,
        batch: u32,
        holder: &str,
        gate_key: &str,
    ) -> Result<Begin> {
        let reply: Vec<String> = self
            .begin
            .key(self.done_key(run, batch))
            .key(gate_key)
            .key(self.lease_key(run, batch))
            .arg(holder)
            .arg(self.ttl_ms())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(match reply.first().map(String::as_str) {
            Some("done") => Begin::Done,
            Some("acquired") => Begin::Acquired,
            Some("busy") => Begin::Busy,
            Some("gate") => Begin::Gate(reply.get(1).cloned()),
            _ => Begin::Gate(None),
        })
    }

    /// After a batch: remembers it as done when `done` (its event is out), and
    /// gives the lease back if `holder` still holds it — one round trip.
    pub async fn finish(&self, run: Uuid, batch: u32, holder: &str, done: bool) -> Result<()> {
        let _: i64 = self
            .finish
            .key(self.done_key(run, batch))
            .key(self.lease_key(run, batch))
            .arg(holder)
            .arg(if done { DONE_TTL.as_secs() } else { 0 })
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Takes the lease if nobody holds it. `true` when `holder` now holds it.
    pub async fn acquire(&self, run: Uuid, batch: u32, holder: &str) -> Result<bool> {
        let set: Option<String> = redis::cmd("SET")
            .arg(self.lease_key(run, batch))
            .arg(holder)
            .arg("NX")
            .arg("PX")
            .arg(self.ttl_ms())
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(set.is_some())
    }

    /// Extends the lease if `holder` still holds it. `false` means it was lost.
    pub async fn extend(&self, run: Uuid, batch: u32, holder: &str) -> Result<bool> {
        let n: i64 = self
            .extend
            .key(self.lease_key(run, batch))
            .arg(holder)
            .arg(self.ttl_ms())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(n == 1)
    }

    /// Who holds the lease now, if anyone.
    pub async fn holder(&self, run: Uuid, batch: u32) -> Result<Option<String>> {
        redis::cmd("GET")
            .arg(self.lease_key(run, batch))
            .query_async(&mut self.conn.clone())
            .await
    }

    /// Who holds each of `batches`' leases now, in order.
    pub async fn holders(&self, run: Uuid, batches: &[u32]) -> Result<Vec<Option<String>>> {
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        for &batch in batches {
            cmd.arg(self.lease_key(run, batch));
        }
        cmd.query_async(&mut self.conn.clone()).await
    }
}

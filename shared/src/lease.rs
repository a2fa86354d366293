//! Batch leases and idempotency keys in Redis.
//!
//! A lease (`<ns>:lease:<run>:<batch>`) is taken with `SET NX PX`, kept alive by
//! [`Leases::extend`] and given back by [`Leases::release`]; both compare the holder
//! before touching the key, so a worker whose lease expired cannot extend or delete
//! the next holder's. The lease only keeps two workers from doing the same work at
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

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// How long an idempotency key is remembered.
const DONE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Clone)]
pub struct Leases {
    conn: ConnectionManager,
    namespace: String,
    ttl: Duration,
    extend: Script,
    release: Script,
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
            release: Script::new(RELEASE),
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

    /// Gives the lease back if `holder` still holds it.
    pub async fn release(&self, run: Uuid, batch: u32, holder: &str) -> Result<bool> {
        let n: i64 = self
            .release
            .key(self.lease_key(run, batch))
            .arg(holder)
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

    pub async fn is_done(&self, run: Uuid, batch: u32) -> Result<bool> {
        redis::cmd("EXISTS")
            .arg(self.done_key(run, batch))
            .query_async(&mut self.conn.clone())
            .await
    }

    pub async fn mark_done(&self, run: Uuid, batch: u32) -> Result<()> {
        redis::cmd("SET")
            .arg(self.done_key(run, batch))
            .arg(1)
            .arg("EX")
            .arg(DONE_TTL.as_secs())
            .query_async(&mut self.conn.clone())
            .await
    }
}

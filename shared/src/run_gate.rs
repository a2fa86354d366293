//! The run's gate — go, wait (paused, throttled) or stop — as workers read it
//! before each batch: from Redis (`<ns>:gate:<run>`), not from the warehouse.
//!
//! PostgreSQL stays the record. Whoever changes a run's state (the CLI's verbs, the
//! coordinator's load guard and halts) writes the new gate to Redis after the
//! change commits, and a driving coordinator writes it again at every reconcile.
//! Each copy expires after [`GATE_TTL`]; a worker that finds none (expired, or
//! Redis was flushed) reads the warehouse and caches what it read with `SET NX`,
//! so it never overwrites a newer gate written meanwhile. A gate that failed to
//! reach Redis is therefore stale for at most [`GATE_TTL`].

use crate::control::ControlError;
use crate::control::runs::{self, Gate, RunState};
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

/// How long a cached gate is believed.
pub const GATE_TTL: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Control(#[from] ControlError),
}

pub type Result<T, E = GateError> = std::result::Result<T, E>;

#[derive(Clone)]
pub struct Gates {
    conn: ConnectionManager,
    namespace: String,
}

impl std::fmt::Debug for Gates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gates")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Gates {
    #[must_use]
    pub fn new(conn: ConnectionManager, namespace: &str) -> Self {
        Self {
            conn,
            namespace: namespace.to_owned(),
        }
    }

    /// The Redis key of the run's gate, for scripts that read it with other keys
    /// (`Leases::begin`); its text is `go`, `wait <reason>` or `stop <state>`.
    #[must_use]
    pub fn key(&self, run_id: Uuid) -> String {
        format!("{}:gate:{run_id}", self.namespace)
    }

    /// The run's gate: Redis's copy, or the warehouse's (then cached) when there is none.
    pub async fn get(&self, pool: &PgPool, run_id: Uuid) -> Result<Gate> {
        let cached: Option<String> = redis::cmd("GET")
            .arg(self.key(run_id))
            .query_async(&mut self.conn.clone())
            .await?;
        self.or_warehouse(pool, run_id, cached.as_deref()).await
    }

    /// The gate a cached text says, or, when there is none (or it is not one),
    /// the warehouse's, cached for the next reader.
    pub async fn or_warehouse(
        &self,
        pool: &PgPool,
        run_id: Uuid,
        cached: Option<&str>,
    ) -> Result<Gate> {
        if let Some(gate) = cached.and_then(decode) {
            return Ok(gate);
        }
        let gate = runs::gate(pool, run_id).await?;
        self.set(run_id, &gate, true).await?;
        Ok(gate)
    }

    /// Reads the run's gate from the warehouse and writes it to Redis, replacing
    /// any copy there. Call after every change of the run's state.
    pub async fn publish(&self, pool: &PgPool, run_id: Uuid) -> Result<Gate> {
        let gate = runs::gate(pool, run_id).await?;
        self.set(run_id, &gate, false).await?;
        Ok(gate)
    }

    async fn set(&self, run_id: Uuid, gate: &Gate, only_if_absent: bool) -> Result<()> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(run_id)).arg(encode(gate));
        if only_if_absent {
            cmd.arg("NX");
        }
        cmd.arg("PX")
            .arg(u64::try_from(GATE_TTL.as_millis()).unwrap_or(u64::MAX));
        let _: Option<String> = cmd.query_async(&mut self.conn.clone()).await?;
        Ok(())
    }
}

/// `go`, `wait <reason>` or `stop <state>`.
fn encode(gate: &Gate) -> String {
    match gate {
        Gate::Go => "go".into(),
        Gate::Wait(reason) => format!("wait {reason}"),
        Gate::Stop(state) => format!("stop {state}"),
    }
}

fn decode(text: &str) -> Option<Gate> {
    let (verb, rest) = text.split_once(' ').unwrap_or((text, ""));
    match verb {
        "go" => Some(Gate::Go),
        "wait" => Some(Gate::Wait(rest.to_owned())),
        "stop" => RunState::parse(rest).map(Gate::Stop),
        _ => None,
    }
}

/// Writes the run's gate after a state change, for callers that must not fail
/// because Redis is away: the change is recorded, and workers see it within
/// [`GATE_TTL`] anyway. Returns the warning to show, if any.
pub async fn publish_or_warn(gates: Option<&Gates>, pool: &PgPool, run_id: Uuid) -> Option<String> {
    let Some(gates) = gates else {
        return Some(format!(
            "Redis is unreachable: workers see run {run_id}'s new state within {} s",
            GATE_TTL.as_secs()
        ));
    };
    match gates.publish(pool, run_id).await {
        Ok(_) => None,
        Err(e) => Some(format!(
            "could not tell workers through Redis ({e}); they see run {run_id}'s new state within {} s",
            GATE_TTL.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_round_trip() {
        for gate in [
            Gate::Go,
            Gate::Wait("throttled by pause_when since 2026-01-01".into()),
            Gate::Wait(String::new()),
            Gate::Stop(RunState::Cancelled),
            Gate::Stop(RunState::Halted),
        ] {
            assert_eq!(decode(&encode(&gate)), Some(gate));
        }
        assert_eq!(decode("stop nonsense"), None);
        assert_eq!(decode("maybe"), None);
    }
}

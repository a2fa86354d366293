//! The load guard: what holds new batches besides the operator.

use crate::Result;
use backfill_shared::brief::{Limits, Window};
use backfill_shared::control::runs;
use sqlx::{AssertSqlSafe, PgPool};
use std::time::Duration;
use tracing::warn;
use uuid::Uuid;

/// What holds new batches besides the operator: the brief's `pause_when` load
/// guard (polled while the run is active) and its time `window`. Holding starts
/// at once; batches start again once nothing has held them for the cool-down.
/// Each throttle period is logged with its reason and length.
pub(super) struct LoadGuard {
    query: Option<String>,
    window: Option<Window>,
    cooldown: Duration,
    actor: String,
    throttled: bool,
    clear_since: Option<tokio::time::Instant>,
}

impl LoadGuard {
    pub(super) fn new(limits: &Limits, cooldown: Duration, actor: &str) -> Self {
        Self {
            query: limits.pause_when.clone(),
            window: limits.window,
            cooldown,
            actor: actor.to_owned(),
            throttled: false,
            clear_since: None,
        }
    }

    /// Why new batches must wait now, if they must.
    async fn reason(&self, pool: &PgPool, run_id: Uuid) -> Option<String> {
        if let Some(w) = self.window
            && !w.contains(chrono::Utc::now().time())
        {
            return Some(format!("outside the window {w}"));
        }
        let query = self.query.as_ref()?;
        match sqlx::query_scalar::<_, Option<bool>>(AssertSqlSafe(query.clone()))
            .fetch_one(pool)
            .await
        {
            Ok(v) => v.unwrap_or(false).then(|| "pause_when holds".to_owned()),
            Err(e) => {
                // A guard that cannot be read protects nothing: stay as we are, loudly.
                warn!(run.id = %run_id, error = %e, "the pause_when guard failed; keeping the current throttle state");
                self.throttled.then(|| "pause_when unreadable".to_owned())
            }
        }
    }

    /// Polls; returns whether the run is throttled now.
    pub(super) async fn poll(&mut self, pool: &PgPool, run_id: Uuid) -> Result<bool> {
        match self.reason(pool, run_id).await {
            Some(reason) => {
                self.clear_since = None;
                if !self.throttled {
                    self.throttled = true;
                    runs::set_throttled(pool, run_id, true, &self.actor, &reason).await?;
                }
            }
            None if self.throttled => {
                let since = *self
                    .clear_since
                    .get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= self.cooldown {
                    self.throttled = false;
                    self.clear_since = None;
                    runs::set_throttled(pool, run_id, false, &self.actor, "clear").await?;
                }
            }
            None => {}
        }
        Ok(self.throttled)
    }
}

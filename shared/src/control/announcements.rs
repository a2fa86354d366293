//! Announcements (`backfill announce`): the note sent before a run, recorded
//! by the hash of its brief, so `run` can tell whether a brief was announced.

use super::Result;
use sqlx::PgPool;

/// An announcement as recorded.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct Announcement {
    pub id: i64,
    pub brief_hash: String,
    pub name: String,
    pub target: String,
    pub window_start: chrono::DateTime<chrono::Utc>,
    pub window_end: chrono::DateTime<chrono::Utc>,
    pub note: String,
    pub announced_by: String,
    /// The webhooks that took it.
    pub delivered: sqlx::types::Json<Vec<String>>,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// What `backfill announce` records.
#[derive(Debug)]
pub struct NewAnnouncement<'a> {
    pub brief_hash: &'a str,
    pub name: &'a str,
    pub target: &'a str,
    pub window: (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>),
    pub note: &'a str,
    pub announced_by: &'a str,
}

const COLUMNS: &str =
    "id, brief_hash, name, target, window_start, window_end, note, announced_by, delivered, at";

pub async fn record(pool: &PgPool, new: &NewAnnouncement<'_>) -> Result<Announcement> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO backfill.announcements
             (brief_hash, name, target, window_start, window_end, note, announced_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
    )))
    .bind(new.brief_hash)
    .bind(new.name)
    .bind(new.target)
    .bind(new.window.0)
    .bind(new.window.1)
    .bind(new.note)
    .bind(new.announced_by)
    .fetch_one(pool)
    .await?)
}

/// Records the webhooks that took announcement `id`.
pub async fn set_delivered(pool: &PgPool, id: i64, endpoints: &[String]) -> Result<()> {
    sqlx::query("UPDATE backfill.announcements SET delivered = $2 WHERE id = $1")
        .bind(id)
        .bind(sqlx::types::Json(endpoints))
        .execute(pool)
        .await?;
    Ok(())
}

/// The latest announcement of the brief with this hash.
pub async fn latest_for(pool: &PgPool, brief_hash: &str) -> Result<Option<Announcement>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM backfill.announcements
          WHERE brief_hash = $1 ORDER BY id DESC LIMIT 1"
    )))
    .bind(brief_hash)
    .fetch_optional(pool)
    .await?)
}

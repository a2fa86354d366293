//! Connecting to the three services. Each failure names the service, the address
//! (password redacted) and how to fix it; the CLI maps [`ServiceError`] to exit code 3.

use crate::config::{Config, redact_url};
use lapin::{Connection, ConnectionProperties};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("PostgreSQL at {url} is unreachable: {reason}. {fix}")]
    Postgres {
        url: String,
        reason: String,
        fix: &'static str,
    },
    #[error("RabbitMQ at {url} is unreachable: {reason}. {fix}")]
    Rabbit {
        url: String,
        reason: String,
        fix: &'static str,
    },
    #[error("Redis at {url} is unreachable: {reason}. {fix}")]
    Redis {
        url: String,
        reason: String,
        fix: &'static str,
    },
}

pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

const PG_START: &str = "Start it (`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, or `bash deploy/install-services.sh`) or set BACKFILL_DATABASE_URL";
const PG_AUTH: &str = "Check the user and password in BACKFILL_DATABASE_URL, and pg_hba.conf";
const PG_DB: &str = "Create the database or point BACKFILL_DATABASE_URL at an existing one";
const RABBIT_START: &str = "Start it (`rabbitmq-server -detached`, or `bash deploy/install-services.sh`) or set BACKFILL_AMQP_URL";
const RABBIT_AUTH: &str = "Check the user and password in BACKFILL_AMQP_URL";
const REDIS_START: &str = "Start it (`redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" --appendonly no`, or `bash deploy/install-services.sh`) or set BACKFILL_REDIS_URL";
const REDIS_AUTH: &str = "Check the password in BACKFILL_REDIS_URL";

/// A pool to the warehouse (which also holds the control plane, schema `backfill`).
pub async fn postgres(config: &Config, max_connections: u32) -> Result<PgPool> {
    postgres_as(config, max_connections, "backfill").await
}

/// The same, naming the connections `application_name` in `pg_stat_activity`.
pub async fn postgres_as(
    config: &Config,
    max_connections: u32,
    application_name: &str,
) -> Result<PgPool> {
    let err = |reason: String, fix| ServiceError::Postgres {
        url: redact_url(&config.database_url),
        reason,
        fix,
    };
    let options = PgConnectOptions::from_str(&config.database_url)
        .map_err(|e| err(scrub(&e.to_string(), &config.database_url), PG_START))?
        .application_name(application_name)
        .log_statements(tracing::log::LevelFilter::Trace)
        // Backfill statements are long by design; a slow one is not a warning.
        .log_slow_statements(tracing::log::LevelFilter::Debug, Duration::from_secs(1));
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(|e| {
            let fix = match &e {
                sqlx::Error::Database(db) => match db.code().as_deref() {
                    Some("28P01" | "28000") => PG_AUTH,
                    Some("3D000") => PG_DB,
                    _ => PG_START,
                },
                _ => PG_START,
            };
            err(scrub(&e.to_string(), &config.database_url), fix)
        })
}

/// Makes rustls use ring for HTTPS clients (an https:// collector or
/// lineage endpoint), as the broker's TLS does; once per process is enough.
pub fn tls_with_ring() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// How long a broker may take to answer a new connection's handshake. A node
/// that accepts TCP but never answers (booting, stopping, or blocked) would
/// otherwise hold the caller forever.
const RABBIT_HANDSHAKE: Duration = Duration::from_secs(20);
const RABBIT_SILENT: &str = "It took the connection but did not answer: check `rabbitmqctl status` (a node that is starting, stopping or out of disk or memory does this) and its log";

/// An AMQP connection.
pub async fn rabbit(config: &Config, name: &str) -> Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let connect = Connection::connect(&config.amqp_url, properties);
    let Ok(connected) = tokio::time::timeout(RABBIT_HANDSHAKE, connect).await else {
        return Err(ServiceError::Rabbit {
            url: redact_url(&config.amqp_url),
            reason: format!(
                "no answer to the handshake within {} s",
                RABBIT_HANDSHAKE.as_secs()
            ),
            fix: RABBIT_SILENT,
        });
    };
    let connection = connected.map_err(|e| {
        let reason = scrub(&e.to_string(), &config.amqp_url);
        let lower = reason.to_lowercase();
        let fix = if lower.contains("access") || lower.contains("auth") || lower.contains("login") {
            RABBIT_AUTH
        } else {
            RABBIT_START
        };
        ServiceError::Rabbit {
            url: redact_url(&config.amqp_url),
            reason,
            fix,
        }
    })?;
    tokio::spawn(say_when_blocked(
        connection.events_listener(),
        name.to_owned(),
    ));
    Ok(connection)
}

/// Logs the broker blocking a connection's publishes (a resource alarm), with
/// its reason and the fix, and its unblocking; ends with the connection.
async fn say_when_blocked(
    mut events: impl futures_util::Stream<Item = lapin::Event> + Unpin,
    name: String,
) {
    use futures_util::StreamExt as _;
    while let Some(event) = events.next().await {
        match event {
            lapin::Event::ConnectionBlocked(reason) => tracing::warn!(
                connection = %name,
                "RabbitMQ blocks this connection's publishes: {reason}. {}",
                crate::topology::ALARM_FIX
            ),
            lapin::Event::ConnectionUnblocked => {
                tracing::warn!(connection = %name, "RabbitMQ unblocked this connection's publishes");
            }
            _ => {}
        }
    }
}

/// A Redis connection manager (it reconnects by itself after a connection is lost).
pub async fn redis(config: &Config) -> Result<redis::aio::ConnectionManager> {
    let err = |e: &redis::RedisError| {
        let fix = match e.kind() {
            redis::ErrorKind::AuthenticationFailed => REDIS_AUTH,
            _ => REDIS_START,
        };
        ServiceError::Redis {
            url: redact_url(&config.redis_url),
            reason: scrub(&e.to_string(), &config.redis_url),
            fix,
        }
    };
    let client = redis::Client::open(config.redis_url.as_str()).map_err(|e| err(&e))?;
    let manager_config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(10)))
        .set_number_of_retries(2);
    let mut manager = tokio::time::timeout(
        Duration::from_secs(15),
        redis::aio::ConnectionManager::new_with_config(client, manager_config),
    )
    .await
    .map_err(|_| ServiceError::Redis {
        url: redact_url(&config.redis_url),
        reason: "no answer within 15 s".into(),
        fix: REDIS_START,
    })?
    .map_err(|e| err(&e))?;
    let _: String = redis::cmd("PING")
        .query_async(&mut manager)
        .await
        .map_err(|e| err(&e))?;
    Ok(manager)
}

/// Removes a URL (and its password) from an error text, in case a driver echoes it.
/// A client library's error text, fit for our message: the password hidden,
/// and no closing period (the message adds its own).
fn scrub(text: &str, url: &str) -> String {
    let mut out = text.replace(url, &redact_url(url));
    if let Some(password) = password_of(url)
        && !password.is_empty()
    {
        out = out.replace(password, "***");
    }
    out.trim_end().trim_end_matches('.').to_owned()
}

fn password_of(url: &str) -> Option<&str> {
    let rest = &url[url.find("://")? + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    Some(&userinfo[userinfo.find(':')? + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_hides_passwords() {
        let url = "amqp://bob:s3cr3t@host:5672/%2f";
        let text = format!("failed to connect to {url} with s3cr3t");
        let out = scrub(&text, url);
        assert!(!out.contains("s3cr3t"), "{out}");
        assert!(out.contains("bob:***@host"), "{out}");
        assert_eq!(password_of("redis://127.0.0.1:6379"), None);
        assert_eq!(
            scrub("see the broker logfile.", url),
            "see the broker logfile"
        );
    }
}

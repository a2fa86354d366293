//! People: the names briefs use (owner, reviewer), mapped to the database roles
//! the warehouse authenticates. A person's identity is the PostgreSQL session
//! user, never a name someone typed; the database itself refuses an approval or
//! an accepted check from any role but the reviewer's (migration 0008).

use super::{ControlError, Result};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Person {
    pub name: String,
    pub role: String,
    pub email: Option<String>,
}

/// Who this session is: its database role, and the person mapped to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Session {
    pub role: String,
    pub person: Option<Person>,
    /// A superuser's own session, acting for nobody: the database's rules
    /// of who may move a run do not bind it (it could drop them anyway).
    pub superuser: bool,
}

impl Session {
    /// The name to record as the actor: the person, else the role itself.
    #[must_use]
    pub fn name(&self) -> &str {
        self.person.as_ref().map_or(&self.role, |p| &p.name)
    }

    /// Whether this session is the person named `name`.
    #[must_use]
    pub fn is(&self, name: &str) -> bool {
        self.person
            .as_ref()
            .is_some_and(|p| p.name.eq_ignore_ascii_case(name))
    }
}

/// The role a connection of `pool` acts as (its session user, or the person a
/// console acts for: `backfill.acting_role()`, migration 0013), and who that is.
pub async fn whoami(pool: &PgPool) -> Result<Session> {
    let (role, person, superuser): (String, Option<sqlx::types::Json<Person>>, bool) =
        sqlx::query_as(
            "SELECT a::text,
                    (SELECT to_jsonb(p) FROM (SELECT name, role::text AS role, email FROM backfill.people
                                               WHERE role = a) p),
                    a = session_user AND (SELECT rolsuper FROM pg_roles WHERE rolname = session_user)
               FROM backfill.acting_role() a",
        )
        .fetch_one(pool)
        .await?;
    Ok(Session {
        role,
        person: person.map(|p| p.0),
        superuser,
    })
}

/// Adds a person, or changes their role or email.
pub async fn put(pool: &PgPool, person: &Person) -> Result<()> {
    sqlx::query(
        "INSERT INTO backfill.people (name, role, email) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO UPDATE SET role = EXCLUDED.role, email = EXCLUDED.email",
    )
    .bind(&person.name)
    .bind(&person.role)
    .bind(&person.email)
    .execute(pool)
    .await?;
    Ok(())
}

/// Removes a person; false if there was none of that name.
pub async fn remove(pool: &PgPool, name: &str) -> Result<bool> {
    Ok(
        sqlx::query("DELETE FROM backfill.people WHERE lower(name) = lower($1)")
            .bind(name)
            .execute(pool)
            .await?
            .rows_affected()
            == 1,
    )
}

/// Everyone, by name.
pub async fn list(pool: &PgPool) -> Result<Vec<Person>> {
    Ok(sqlx::query_as(
        "SELECT name, role::text AS role, email FROM backfill.people ORDER BY lower(name)",
    )
    .fetch_all(pool)
    .await?)
}

/// Whether a database role of that name exists.
pub async fn role_exists(pool: &PgPool, role: &str) -> Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(role)
            .fetch_one(pool)
            .await?,
    )
}

/// The person a console login names: by name, database role or email, in any case.
pub async fn by_login(pool: &PgPool, login: &str) -> Result<Option<Person>> {
    Ok(sqlx::query_as(
        "SELECT name, role::text AS role, email FROM backfill.people
          WHERE lower(name) = lower($1) OR role::text = $1 OR lower(email) = lower($1)
          ORDER BY lower(name) = lower($1) DESC, role::text = $1 DESC LIMIT 1",
    )
    .bind(login)
    .fetch_optional(pool)
    .await?)
}

/// Connections of `pool`'s login that act for `role` (the console for the
/// person logged in; the demo for its reviewer); refused when that login may
/// not act for people (migration 0013).
pub async fn acting_for(pool: &PgPool, role: &str) -> Result<PgPool> {
    let setting = role.to_owned();
    let acting = PgPoolOptions::new()
        .max_connections(2)
        .after_connect(move |conn, _| {
            let role = setting.clone();
            Box::pin(async move {
                sqlx::query("SELECT set_config('backfill.acting_role', $1, false)")
                    .bind(role)
                    .execute(conn)
                    .await
                    .map(|_| ())
            })
        })
        .connect_with((*pool.connect_options()).clone())
        .await?;
    let (acting_as, me): (String, String) =
        sqlx::query_as("SELECT backfill.acting_role()::text, session_user::text")
            .fetch_one(&acting)
            .await?;
    if acting_as != role {
        acting.close().await;
        return Err(ControlError::Refused(format!(
            "database role {me} may not act for people (only a superuser or a member of backfill_console may); an administrator grants it: \
             GRANT backfill_console TO {me} (deploy/roles.sql)"
        )));
    }
    Ok(acting)
}

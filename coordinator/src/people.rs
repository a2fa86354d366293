//! `backfill people`: the names briefs use, mapped to the database roles people
//! log in as, so an approval is by the person it names (see
//! `shared/src/control/people.rs`).

use crate::{CliError, Result};
use backfill_shared::control::people::{self, Person, Session};
use sqlx::PgPool;
use std::fmt::Write as _;

/// Maps `name` to `role`, refusing a role that does not exist or belongs to
/// someone else.
pub async fn add(pool: &PgPool, name: &str, role: &str, email: Option<&str>) -> Result<Person> {
    let name = name.trim();
    if name.is_empty() {
        return Err(CliError::BadInput("the name is blank".into()));
    }
    if !people::role_exists(pool, role).await? {
        return Err(CliError::BadInput(format!(
            "there is no database role {role:?}; create it first (CREATE ROLE {role} LOGIN ...; see deploy/roles.sql)"
        )));
    }
    if let Some(other) = people::list(pool)
        .await?
        .into_iter()
        .find(|p| p.role == role && !p.name.eq_ignore_ascii_case(name))
    {
        return Err(CliError::BadInput(format!(
            "role {role} is already {}; one role is one person (remove {} first)",
            other.name, other.name
        )));
    }
    let person = Person {
        name: name.to_owned(),
        role: role.to_owned(),
        email: email.map(str::to_owned),
    };
    people::put(pool, &person).await?;
    Ok(person)
}

/// Removes a person, refusing an unknown name.
pub async fn remove(pool: &PgPool, name: &str) -> Result<()> {
    if people::remove(pool, name).await? {
        Ok(())
    } else {
        Err(CliError::BadInput(format!(
            "nobody called {name:?} is in backfill.people (`backfill people` lists them)"
        )))
    }
}

/// The table `backfill people` prints.
#[must_use]
pub fn render(everyone: &[Person]) -> String {
    let mut s = String::new();
    if everyone.is_empty() {
        s.push_str("Nobody yet: `backfill people add NAME --role ROLE [--email E]` maps a brief's name to a database role.\n");
    }
    for p in everyone {
        let _ = writeln!(
            s,
            "{:<24} {:<24} {}",
            p.name,
            p.role,
            p.email.as_deref().unwrap_or("")
        );
    }
    s
}

/// One line on who this session is.
#[must_use]
pub fn describe(session: &Session) -> String {
    match &session.person {
        Some(p) => format!("{} (database role {})", p.name, session.role),
        None => format!(
            "database role {}, who is nobody in backfill.people",
            session.role
        ),
    }
}

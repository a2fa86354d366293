//! Connection settings, read once from the environment (with local defaults) and
//! validated before anything connects. [`Config::from_vars`] is a pure function of
//! a map so tests never touch the process environment.

use std::collections::HashMap;

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const DEFAULT_NAMESPACE: &str = "backfill";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "{var} must start with {expected} (got {got}); fix the variable or unset it to use the default"
    )]
    Scheme {
        var: &'static str,
        expected: &'static str,
        got: String,
    },
    #[error(
        "BACKFILL_NAMESPACE={0:?} is not usable: use 1-40 characters from a-z, 0-9, '-', '_' and '.'"
    )]
    Namespace(String),
    #[error(
        "BACKFILL_MESSAGE_KEY is too short: use at least 16 characters (a random secret shared by coordinator and workers)"
    )]
    MessageKey,
    #[error(
        "BACKFILL_DATABASE_URL sets the sessions' time zone ({0}), which Backfill would override: its sessions run in UTC, \
         so a timestamptz bound is one instant whoever plans, applies or reads it. Remove the setting from the URL, and write \
         timestamptz bounds as UTC times (midnight of 2025-02-01 in New York is \"2025-02-01 05:00:00\")"
    )]
    TimeZone(String),
}

pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// Where the three services are, and the namespace that keeps queue names and Redis
/// keys of one deployment (or one test) apart from another's.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    pub database_url: String,
    pub amqp_url: String,
    pub redis_url: String,
    /// Prefix of every queue, exchange and Redis key this deployment uses.
    pub namespace: String,
    /// `BACKFILL_MESSAGE_KEY`: when set, batch messages are signed and checked.
    pub message_key: Option<String>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("database_url", &redact_url(&self.database_url))
            .field("amqp_url", &redact_url(&self.amqp_url))
            .field("redis_url", &redact_url(&self.redis_url))
            .field("namespace", &self.namespace)
            .field("message_key", &self.message_key.as_ref().map(|_| "***"))
            .finish()
    }
}

/// The `TimeZone` a PostgreSQL URL's query sets (`?options=-c%20TimeZone%3D…`,
/// or `?timezone=…`), unless it is UTC.
fn time_zone_set(url: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    let decoded = percent_decoded(query);
    let lower = decoded.to_ascii_lowercase();
    let at = lower.find("timezone")?;
    let value: String = decoded[at + "timezone".len()..]
        .trim_start_matches([' ', '=', '\''])
        .chars()
        .take_while(|c| !matches!(c, ' ' | '&' | '\''))
        .collect();
    (!matches!(
        value.to_ascii_lowercase().as_str(),
        "utc" | "etc/utc" | "z" | "zulu" | "universal"
    ))
    .then(|| format!("TimeZone={value}"))
}

/// `text` with its `%XX` escapes and `+` decoded (bytes that are not UTF-8 as U+FFFD).
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Config {
    /// Reads `BACKFILL_DATABASE_URL`, `BACKFILL_AMQP_URL`, `BACKFILL_REDIS_URL` and
    /// `BACKFILL_NAMESPACE` from the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(&std::env::vars().collect())
    }

    /// The same, over any map of variables.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self> {
        let get = |name: &str, default: &str| {
            vars.get(name)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
                .unwrap_or(default)
                .to_owned()
        };
        let config = Self {
            database_url: get("BACKFILL_DATABASE_URL", DEFAULT_DATABASE_URL),
            amqp_url: get("BACKFILL_AMQP_URL", DEFAULT_AMQP_URL),
            redis_url: get("BACKFILL_REDIS_URL", DEFAULT_REDIS_URL),
            namespace: get("BACKFILL_NAMESPACE", DEFAULT_NAMESPACE),
            message_key: vars
                .get("BACKFILL_MESSAGE_KEY")
                .filter(|k| !k.is_empty())
                .cloned(),
        };
        config.validate()
    }

    fn validate(self) -> Result<Self> {
        check_scheme(
            "BACKFILL_DATABASE_URL",
            &self.database_url,
            &["postgres://", "postgresql://"],
            "postgres://",
        )?;
        check_scheme(
            "BACKFILL_AMQP_URL",
            &self.amqp_url,
            &["amqp://", "amqps://"],
            "amqp://",
        )?;
        check_scheme(
            "BACKFILL_REDIS_URL",
            &self.redis_url,
            &["redis://", "rediss://", "unix://"],
            "redis://",
        )?;
        if let Some(zone) = time_zone_set(&self.database_url) {
            return Err(ConfigError::TimeZone(zone));
        }
        let ns_ok = (1..=40).contains(&self.namespace.len())
            && self
                .namespace
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
        if !ns_ok {
            return Err(ConfigError::Namespace(self.namespace));
        }
        if self
            .message_key
            .as_ref()
            .is_some_and(|k| k.len() < crate::signing::MIN_KEY_LEN)
        {
            return Err(ConfigError::MessageKey);
        }
        Ok(self)
    }

    /// The same connections under another namespace (tests use one each).
    #[must_use]
    pub fn with_namespace(mut self, namespace: &str) -> Self {
        namespace.clone_into(&mut self.namespace);
        self
    }

    /// The same, signing and checking batch messages with `key`.
    #[must_use]
    pub fn with_message_key(mut self, key: &str) -> Self {
        self.message_key = Some(key.to_owned());
        self
    }

    /// The signer for batch messages, if a key is configured.
    #[must_use]
    pub fn signer(&self) -> Option<crate::signing::Signer> {
        self.message_key.as_deref().map(crate::signing::Signer::new)
    }

    /// The same services with another warehouse database URL.
    #[must_use]
    pub fn with_database_url(mut self, url: &str) -> Self {
        url.clone_into(&mut self.database_url);
        self
    }
}

fn check_scheme(
    var: &'static str,
    value: &str,
    accepted: &[&str],
    expected: &'static str,
) -> Result<()> {
    if accepted.iter().any(|p| value.starts_with(p)) {
        Ok(())
    } else {
        Err(ConfigError::Scheme {
            var,
            expected,
            got: redact_url(value),
        })
    }
}

/// Replaces the password of a URL with `***`, so a connection string can be shown
/// in logs and errors.
#[must_use]
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let redacted = match userinfo.find(':') {
        Some(colon) => format!("{}:***", &userinfo[..colon]),
        None => userinfo.to_owned(),
    };
    format!("{}{}{}", &url[..scheme_end + 3], redacted, &rest[at..])
}

/// An endpoint whose address is itself a secret (a Slack incoming webhook's
/// path is its key; other receivers put tokens in the path or the query), as
/// it may be printed, logged, stored and posted: the scheme, the host and the
/// last four characters, `https://hooks.slack.com/…Xy9z`. Credentials in the
/// authority are dropped.
#[must_use]
pub fn redact_endpoint(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let host = rest[..authority_end]
        .rsplit_once('@')
        .map_or(&rest[..authority_end], |(_, host)| host);
    let tail = &rest[authority_end..];
    let shown_host = if scheme.is_empty() {
        String::new()
    } else {
        format!("{scheme}://{host}")
    };
    if tail.trim_start_matches('/').is_empty() {
        return if shown_host.is_empty() {
            "***".to_owned()
        } else {
            shown_host
        };
    }
    let chars: Vec<char> = tail.chars().collect();
    // Fewer than twelve characters of path show nothing of it: four of them
    // would be a third of the secret.
    let last: String = if chars.len() >= 12 {
        chars[chars.len() - 4..].iter().collect()
    } else {
        String::new()
    };
    format!("{shown_host}/…{last}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_time_zone_in_the_database_url_is_refused_unless_utc() {
        let url = |query: &str| {
            Config::from_vars(&vars(&[(
                "BACKFILL_DATABASE_URL",
                &format!("postgres://etl:hunter2@h/analytics?{query}"),
            )]))
        };
        for query in [
            "options=-c%20TimeZone%3DAmerica%2FNew_York",
            "sslmode=disable&options=-c+timezone=America/New_York",
            "options=-c%20TIMEZONE%3D%27Europe%2FParis%27",
        ] {
            let text = url(query).unwrap_err().to_string();
            assert!(
                text.contains("TimeZone=America/New_York")
                    || text.contains("TimeZone=Europe/Paris"),
                "{query}: {text}"
            );
            assert!(text.contains("UTC") && !text.contains("hunter2"), "{text}");
        }
        for query in [
            "options=-c%20TimeZone%3DUTC",
            "sslmode=disable",
            "application_name=x%",
        ] {
            url(query).unwrap();
        }
    }

    #[test]
    fn defaults_apply_when_unset_or_blank() {
        let c = Config::from_vars(&vars(&[("BACKFILL_REDIS_URL", " ")])).unwrap();
        assert_eq!(c.database_url, DEFAULT_DATABASE_URL);
        assert_eq!(c.redis_url, DEFAULT_REDIS_URL);
        assert_eq!(c.namespace, "backfill");
    }

    #[test]
    fn rejects_wrong_scheme_without_leaking_password() {
        let err = Config::from_vars(&vars(&[(
            "BACKFILL_DATABASE_URL",
            "mysql://u:hunter2@h/db",
        )]))
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("BACKFILL_DATABASE_URL"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn rejects_bad_namespace() {
        for ns in ["Has Space", "UPPER", &"x".repeat(41)] {
            let err = Config::from_vars(&vars(&[("BACKFILL_NAMESPACE", ns)])).unwrap_err();
            assert!(matches!(err, ConfigError::Namespace(_)), "{ns}");
        }
    }

    #[test]
    fn message_key_is_checked_and_hidden() {
        let err = Config::from_vars(&vars(&[("BACKFILL_MESSAGE_KEY", "short")])).unwrap_err();
        assert_eq!(err, ConfigError::MessageKey);
        let c =
            Config::from_vars(&vars(&[("BACKFILL_MESSAGE_KEY", "a-long-enough-secret")])).unwrap();
        assert!(c.signer().is_some());
        assert!(!format!("{c:?}").contains("a-long-enough-secret"));
    }

    #[test]
    fn endpoints_show_scheme_host_and_last_four() {
        let slack = "https://hooks.slack.com/services/T0AAAA/B0BBBB/SeCrEtSeCrEt1234";
        assert_eq!(redact_endpoint(slack), "https://hooks.slack.com/…1234");
        assert_eq!(
            redact_endpoint("https://u:p@events.example:8443/in?token=abcdefghijkl"),
            "https://events.example:8443/…ijkl"
        );
        assert_eq!(redact_endpoint("http://127.0.0.1:9/"), "http://127.0.0.1:9");
        assert_eq!(redact_endpoint("http://h/short"), "http://h/…");
        assert_eq!(redact_endpoint("no scheme/at/all/secretsecret"), "/…cret");
        assert_eq!(
            redact_endpoint("https://h/ÄÖÜ-ßßßß-ÄÖÜé"),
            "https://h/…ÄÖÜé"
        );
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/db"),
            "postgres://postgres@127.0.0.1/db"
        );
        assert_eq!(redact_url("redis://:p%40ss@h:6379"), "redis://:***@h:6379");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn debug_output_is_redacted() {
        let c = Config::from_vars(&vars(&[(
            "BACKFILL_AMQP_URL",
            "amqp://u:topsecret@h:5672/%2f",
        )]))
        .unwrap();
        assert!(!format!("{c:?}").contains("topsecret"));
    }
}

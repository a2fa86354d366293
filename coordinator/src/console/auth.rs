//! Who is at the console. Identity comes from a header an authenticating proxy
//! sets (`--auth-header`, trusted only when given), or from personal tokens
//! (`BACKFILL_CONSOLE_TOKENS`, `name:token` pairs) sent as `Authorization:
//! Bearer` (the scheme in any case), or exchanged by the login page for a
//! session: a random id the server chose, kept in an `HttpOnly`,
//! `SameSite=Strict` (and, unless `--insecure-cookies`, `Secure`) cookie,
//! expiring after [`SESSION_TTL`] and forgotten at logout — the cookie never
//! holds the token. Tokens are compared in constant time. Every action is a
//! POST carrying a CSRF token bound to the login (an HMAC under a key drawn
//! when the console starts).

use axum::http::{HeaderMap, HeaderName, header};
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The cookie that carries a session's id.
pub(super) const COOKIE: &str = "backfill_console_session";

/// How long a session lasts after logging in.
pub(super) const SESSION_TTL: Duration = Duration::from_secs(12 * 60 * 60);

/// How the console learns who is there.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    /// A header set by an authenticating proxy in front of the console.
    pub header: Option<HeaderName>,
    /// Personal tokens: (login, token).
    pub tokens: Vec<(String, String)>,
    /// Whether reading needs a login too (otherwise only actions do).
    pub require_login: bool,
    /// Session cookies without `Secure`, for a console on plain HTTP
    /// (loopback, or behind a proxy that ends TLS on the same host).
    pub insecure_cookies: bool,
    /// `/metrics` open to anyone even with `require_login` (a scraper
    /// without credentials).
    pub public_metrics: bool,
    /// The sessions the login page opened (start with none: `Default`).
    pub sessions: Sessions,
}

/// Open sessions: the SHA-256 of each id, with its login and expiry. Kept in
/// the console's process: a restart logs everyone out, and with several
/// replicas a session holds on the one that opened it.
#[derive(Clone, Default)]
pub struct Sessions(Arc<Mutex<HashMap<[u8; 32], Session>>>);

/// One open session: its login, and when it ends.
type Session = (String, Instant);

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

impl Sessions {
    fn key(id: &str) -> [u8; 32] {
        Sha256::digest(id.as_bytes()).into()
    }

    /// Opens a session for `login`: its id, 256 random bits as hex.
    pub(super) fn open(&self, login: &str) -> String {
        let id: String = (0..2)
            .flat_map(|_| *uuid::Uuid::new_v4().as_bytes())
            .map(|b| format!("{b:02x}"))
            .collect();
        if let Ok(mut open) = self.0.lock() {
            let now = Instant::now();
            open.retain(|_, (_, expires)| *expires > now);
            open.insert(Self::key(&id), (login.to_owned(), now + SESSION_TTL));
        }
        id
    }

    /// The login of an open, unexpired session.
    fn login(&self, id: &str) -> Option<String> {
        let open = self.0.lock().ok()?;
        let (login, expires) = open.get(&Self::key(id))?;
        (*expires > Instant::now()).then(|| login.clone())
    }

    /// Forgets a session: its cookie logs nobody in any more.
    pub(super) fn close(&self, id: &str) {
        if let Ok(mut open) = self.0.lock() {
            open.remove(&Self::key(id));
        }
    }
}

impl Auth {
    /// Reads `BACKFILL_CONSOLE_TOKENS`: comma-separated `name:token` pairs; a
    /// token is at least 16 characters of letters, digits and `-_.~`.
    pub fn parse_tokens(text: &str) -> Result<Vec<(String, String)>, String> {
        let mut tokens: Vec<(String, String)> = Vec::new();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((name, token)) = pair.split_once(':') else {
                return Err(format!(
                    "BACKFILL_CONSOLE_TOKENS: {:?} is not name:token",
                    pair.chars().take(12).collect::<String>()
                ));
            };
            let (name, token) = (name.trim(), token.trim());
            if name.is_empty() {
                return Err("BACKFILL_CONSOLE_TOKENS: a token has no name before its ':'".into());
            }
            if token.len() < 16
                || !token
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.~".contains(c))
            {
                return Err(format!(
                    "BACKFILL_CONSOLE_TOKENS: {name}'s token must be at least 16 characters of letters, digits and -_.~ \
                     (e.g. `openssl rand -hex 24`)"
                ));
            }
            if tokens.iter().any(|(n, t)| n == name || t == token) {
                return Err(format!(
                    "BACKFILL_CONSOLE_TOKENS: {name} is given twice, or shares a token"
                ));
            }
            tokens.push((name.to_owned(), token.to_owned()));
        }
        Ok(tokens)
    }

    /// Whether any way of logging in is configured.
    #[must_use]
    pub fn is_set(&self) -> bool {
        self.header.is_some() || !self.tokens.is_empty()
    }

    /// The login a request carries: the proxy's header, else a bearer token,
    /// else the login cookie. `None` for anyone else.
    pub(super) fn login(&self, headers: &HeaderMap) -> Option<String> {
        if let Some(name) = &self.header {
            let value = headers.get(name)?.to_str().ok()?.trim();
            return (!value.is_empty()).then(|| value.to_owned());
        }
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        if let Some(token) = bearer {
            return self.token_login(token);
        }
        self.sessions.login(session_id(headers)?)
    }

    /// The `Set-Cookie` value that holds session `id`.
    pub(super) fn session_cookie(&self, id: &str) -> String {
        format!(
            "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
            SESSION_TTL.as_secs(),
            if self.insecure_cookies {
                ""
            } else {
                "; Secure"
            }
        )
    }

    /// The login whose token `given` is, comparing every token in constant time.
    pub(super) fn token_login(&self, given: &str) -> Option<String> {
        let given = Sha256::digest(given.as_bytes());
        let mut found = None;
        for (name, token) in &self.tokens {
            let digest = Sha256::digest(token.as_bytes());
            let differ = digest
                .iter()
                .zip(given.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if differ == 0 {
                found = Some(name.clone());
            }
        }
        found
    }
}

/// The session id a request's cookie carries.
pub(super) fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .map(str::trim)
}

/// CSRF tokens: an HMAC of the login under a key of this console process.
#[derive(Debug, Clone)]
pub(super) struct Csrf {
    key: [u8; 32],
}

impl Csrf {
    pub(super) fn new() -> Self {
        let mut key = [0u8; 32];
        for chunk in key.chunks_mut(16) {
            chunk.copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        }
        Self { key }
    }

    fn mac(&self, login: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256>>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(login.as_bytes());
        mac
    }

    pub(super) fn token(&self, login: &str) -> String {
        self.mac(login)
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    pub(super) fn verify(&self, login: &str, token: &str) -> bool {
        let bytes: Option<Vec<u8>> = (0..token.len())
            .step_by(2)
            .map(|i| {
                token
                    .get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect();
        bytes.is_some_and(|b| self.mac(login).verify_slice(&b).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_and_bad_ones_are_named() {
        let tokens =
            Auth::parse_tokens(" alice:0123456789abcdef0 , bob:zyxwvutsrqponmlkj ").unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens[1], ("bob".into(), "zyxwvutsrqponmlkj".into()));
        for (bad, says) in [
            ("alice", "not name:token"),
            (":0123456789abcdef0", "no name"),
            ("alice:short", "at least 16"),
            ("alice:0123456789abcdef<", "at least 16"),
            ("a:0123456789abcdef0,a:0123456789abcdef1", "twice"),
        ] {
            let e = Auth::parse_tokens(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(
                !e.contains("0123456789abcdef"),
                "a token is never echoed: {e}"
            );
        }
    }

    #[test]
    fn a_login_comes_from_the_header_the_bearer_or_the_cookie() {
        let auth = Auth {
            tokens: Auth::parse_tokens("alice:0123456789abcdef0").unwrap(),
            ..Auth::default()
        };
        let mut h = HeaderMap::new();
        assert_eq!(auth.login(&h), None);
        h.insert(
            header::AUTHORIZATION,
            "Bearer 0123456789abcdef0".parse().unwrap(),
        );
        assert_eq!(auth.login(&h).as_deref(), Some("alice"));
        h.insert(
            header::AUTHORIZATION,
            "Bearer 0123456789abcdef1".parse().unwrap(),
        );
        assert_eq!(auth.login(&h), None);
        h.insert(
            header::AUTHORIZATION,
            "bearer 0123456789abcdef0".parse().unwrap(),
        );
        assert_eq!(auth.login(&h).as_deref(), Some("alice"), "any case");
        // A cookie holds a session, never a token; logging out ends it.
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            format!("x=1; {COOKIE}=0123456789abcdef0").parse().unwrap(),
        );
        assert_eq!(auth.login(&h), None, "a token in the cookie logs nobody in");
        let id = auth.sessions.open("alice");
        assert_eq!(id.len(), 64);
        h.insert(
            header::COOKIE,
            format!("x=1; {COOKIE}={id}").parse().unwrap(),
        );
        assert_eq!(auth.login(&h).as_deref(), Some("alice"));
        assert!(auth.session_cookie(&id).ends_with("; Secure"));
        // A proxy's header is trusted only when configured, and then alone.
        h.insert("x-forwarded-user", "bob".parse().unwrap());
        assert_eq!(auth.login(&h).as_deref(), Some("alice"));
        auth.sessions.close(&id);
        assert_eq!(auth.login(&h), None);
        let proxied = Auth {
            header: Some(HeaderName::from_static("x-forwarded-user")),
            ..auth
        };
        assert_eq!(proxied.login(&h).as_deref(), Some("bob"));
    }

    #[test]
    fn csrf_tokens_are_bound_to_the_login_and_the_process() {
        let (csrf, other) = (Csrf::new(), Csrf::new());
        let token = csrf.token("alice");
        assert!(csrf.verify("alice", &token));
        assert!(!csrf.verify("bob", &token));
        assert!(!other.verify("alice", &token));
        assert!(!csrf.verify("alice", "zz"));
        assert!(!csrf.verify("alice", ""));
    }
}

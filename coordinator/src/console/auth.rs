//! Who is at the console. Identity comes from a header an authenticating proxy
//! sets (`--auth-header`, trusted only when given), or from personal tokens
//! (`BACKFILL_CONSOLE_TOKENS`, `name:token` pairs) sent as `Authorization:
//! Bearer` or kept in a cookie by the login page; tokens are compared in
//! constant time. Every action is a POST carrying a CSRF token bound to the
//! login (an HMAC under a key drawn when the console starts).

use axum::http::{HeaderMap, HeaderName, header};
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::{Digest as _, Sha256};

/// The cookie the login page sets.
pub(super) const COOKIE: &str = "backfill_console_token";

/// How the console learns who is there.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    /// A header set by an authenticating proxy in front of the console.
    pub header: Option<HeaderName>,
    /// Personal tokens: (login, token).
    pub tokens: Vec<(String, String)>,
    /// Whether reading needs a login too (otherwise only actions do).
    pub require_login: bool,
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
            .and_then(|v| v.strip_prefix("Bearer "));
        let cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='));
        self.token_login(bearer.or(cookie)?.trim())
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
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            format!("x=1; {COOKIE}=0123456789abcdef0").parse().unwrap(),
        );
        assert_eq!(auth.login(&h).as_deref(), Some("alice"));
        // A proxy's header is trusted only when configured, and then alone.
        h.insert("x-forwarded-user", "bob".parse().unwrap());
        assert_eq!(auth.login(&h).as_deref(), Some("alice"));
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

//! Optional signing of batch messages. With `BACKFILL_MESSAGE_KEY` set, the
//! coordinator puts an HMAC-SHA256 of each batch message's payload in the
//! `x-backfill-signature` header, and workers dead-letter any message that is
//! unsigned or wrongly signed. Without the key, messages are neither signed nor
//! checked (the brief hash and the ledger still refuse forged work).

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The header the signature travels in, as lowercase hex.
pub const SIGNATURE_HEADER: &str = "x-backfill-signature";

/// Shortest key accepted.
pub const MIN_KEY_LEN: usize = 16;

#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(***)")
    }
}

impl Signer {
    #[must_use]
    pub fn new(key: &str) -> Self {
        Self {
            key: key.as_bytes().to_vec(),
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes a key of any length; this cannot fail.
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"))
    }

    /// The signature of a payload, as lowercase hex.
    #[must_use]
    pub fn sign(&self, payload: &[u8]) -> String {
        let mut mac = self.mac();
        mac.update(payload);
        mac.finalize()
            .into_bytes()
            .iter()
            .fold(String::with_capacity(64), |mut s, b| {
                use std::fmt::Write as _;
                let _ = write!(s, "{b:02x}");
                s
            })
    }

    /// Whether `signature` (hex) signs `payload`, compared in constant time.
    #[must_use]
    pub fn verify(&self, payload: &[u8], signature: &str) -> bool {
        let Some(bytes) = decode_hex(signature) else {
            return false;
        };
        let mut mac = self.mac();
        mac.update(payload);
        mac.verify_slice(&bytes).is_ok()
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_and_verifies() {
        let s = Signer::new("a key of sixteen+ chars");
        let sig = s.sign(b"payload");
        assert_eq!(sig.len(), 64);
        assert!(s.verify(b"payload", &sig));
        assert!(!s.verify(b"payload!", &sig));
        assert!(!Signer::new("another key, also long").verify(b"payload", &sig));
        assert!(!s.verify(b"payload", "zz"));
        assert!(!s.verify(b"payload", "abc"));
        assert_eq!(format!("{s:?}"), "Signer(***)");
    }
}

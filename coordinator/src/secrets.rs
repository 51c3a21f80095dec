//! Sealing secrets at rest (DESIGN §8, G9): job passwords and custom header values are
//! encrypted with the cluster's secret key (ChaCha20-Poly1305 from ring) before they are
//! proposed, so the Raft log, snapshots and state rows only hold ciphertext. The key
//! lives in `<data-dir>/secret.key` (mode 0600).
//!
//! Sealing is deterministic: the nonce is a keyed BLAKE3 hash of the associated data
//! and the plaintext (a synthetic IV). The same secret for the same purpose seals to the
//! same bytes, so a retried request carries the same command and its idempotency key
//! still matches; different secrets never share a nonce.

use ferry_protocol::Principal;
use ferry_protocol::job::SEALED_PREFIX;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// Bytes of a secret key.
pub const KEY_LEN: usize = 32;

/// Why a seal or an open failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key file does not hold a key.
    #[error("a secret key is {KEY_LEN} bytes; this one is {0}")]
    KeyLength(usize),
    /// No randomness for a nonce.
    #[error("the system random generator failed")]
    Random,
    /// The plaintext cannot be sealed (too large).
    #[error("the secret cannot be sealed")]
    Seal,
    /// The ciphertext is damaged, or was sealed with another key or for another use.
    #[error("the sealed secret cannot be opened (wrong key or damaged data)")]
    Open,
}

/// The cluster's secret key.
pub struct SecretKey {
    key: LessSafeKey,
    /// Derived from the key; makes the synthetic nonces.
    nonce_key: [u8; 32],
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl SecretKey {
    /// A key from its bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, bytes)
            .map_err(|_| SealError::KeyLength(bytes.len()))?;
        let nonce_key = blake3::derive_key("ferry secret seal nonce v1", bytes);
        Ok(Self { key: LessSafeKey::new(unbound), nonce_key })
    }

    /// Fresh random key bytes.
    pub fn generate() -> Result<[u8; KEY_LEN], SealError> {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new().fill(&mut bytes).map_err(|_| SealError::Random)?;
        Ok(bytes)
    }

    /// Encrypts `plaintext`, binding `associated` (which must be given again to open).
    pub fn seal(&self, plaintext: &[u8], associated: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut hasher = blake3::Hasher::new_keyed(&self.nonce_key);
        hasher.update(&(associated.len() as u64).to_le_bytes());
        hasher.update(associated);
        hasher.update(plaintext);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&hasher.finalize().as_bytes()[..NONCE_LEN]);
        let mut out = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(associated),
                &mut out,
            )
            .map_err(|_| SealError::Seal)?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&out);
        Ok(sealed)
    }

    /// Decrypts what [`seal`](Self::seal) produced with the same associated data.
    pub fn open(&self, sealed: &[u8], associated: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < NONCE_LEN {
            return Err(SealError::Open);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open)?;
        let mut buf = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(associated), &mut buf)
            .map_err(|_| SealError::Open)?;
        Ok(plain.to_vec())
    }
}

/// The associated data of a custom header value: its owner and header name.
fn header_purpose(owner: &Principal, name: &str) -> Vec<u8> {
    format!("ferry-header/1|{owner}|{}", name.trim().to_ascii_lowercase()).into_bytes()
}

impl SecretKey {
    /// Seals the value of every `Name: value` line (lines already sealed stay as they
    /// are). The owner, not the job, is bound: a retried create (with a new job id)
    /// seals to the same bytes.
    pub fn seal_headers(
        &self,
        owner: &Principal,
        lines: &[String],
    ) -> Result<Vec<String>, SealError> {
        map_values(lines, |name, value| {
            if value.starts_with(SEALED_PREFIX) {
                return Ok(None);
            }
            let sealed = self.seal(value.as_bytes(), &header_purpose(owner, name))?;
            Ok(Some(format!("{SEALED_PREFIX}{}", hex::encode(sealed))))
        })
    }

    /// Opens what [`seal_headers`](Self::seal_headers) sealed; other lines pass as they are.
    pub fn open_headers(
        &self,
        owner: &Principal,
        lines: &[String],
    ) -> Result<Vec<String>, SealError> {
        map_values(lines, |name, value| {
            let Some(hex_text) = value.strip_prefix(SEALED_PREFIX) else {
                return Ok(None);
            };
            let sealed = hex::decode(hex_text).map_err(|_| SealError::Open)?;
            let plain = self.open(&sealed, &header_purpose(owner, name))?;
            String::from_utf8(plain).map(Some).map_err(|_| SealError::Open)
        })
    }
}

/// Rewrites the values of `Name: value` lines with `f` (`None`: keep the line).
fn map_values(
    lines: &[String],
    f: impl Fn(&str, &str) -> Result<Option<String>, SealError>,
) -> Result<Vec<String>, SealError> {
    lines
        .iter()
        .map(|line| match line.split_once(':') {
            Some((name, value)) => {
                Ok(f(name, value.trim())?.map_or_else(|| line.clone(), |v| format!("{name}: {v}")))
            }
            None => Ok(line.clone()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_open_and_tamper_detection() {
        let key = SecretKey::from_bytes(&SecretKey::generate().expect("rng")).expect("key");
        let sealed = key.seal(b"hunter2", b"job-1").expect("seal");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(key.open(&sealed, b"job-1").expect("open"), b"hunter2");
        assert!(key.open(&sealed, b"job-2").is_err(), "bound to its associated data");
        let mut bad = sealed.clone();
        bad[NONCE_LEN] ^= 1;
        assert!(key.open(&bad, b"job-1").is_err());
        assert!(key.open(&[1, 2], b"job-1").is_err());
        assert!(SecretKey::from_bytes(&[0; 5]).is_err());
    }

    #[test]
    fn header_values_seal_and_open() {
        let key = SecretKey::from_bytes(&[9; KEY_LEN]).expect("key");
        let owner = Principal::new("alice").expect("name");
        let lines = vec!["Authorization: Bearer s3cret".to_owned(), "X-Plain: 1".to_owned()];
        let sealed = key.seal_headers(&owner, &lines).expect("seal");
        assert!(sealed.iter().all(|l| !l.contains("s3cret") && l.contains(SEALED_PREFIX)));
        assert!(sealed[0].starts_with("Authorization: "));
        assert_eq!(
            key.seal_headers(&owner, &sealed).expect("again"),
            sealed,
            "sealing twice is a no-op"
        );
        assert_eq!(key.open_headers(&owner, &sealed).expect("open"), lines);
        let bob = Principal::new("bob").expect("name");
        assert!(key.open_headers(&bob, &sealed).is_err(), "bound to the owner");
    }

    #[test]
    fn sealing_is_deterministic_per_secret_and_purpose() {
        let key = SecretKey::from_bytes(&[7; KEY_LEN]).expect("key");
        let seal = |p: &[u8], a: &[u8]| key.seal(p, a).expect("seal");
        assert_eq!(seal(b"pw", b"a"), seal(b"pw", b"a"));
        assert_ne!(seal(b"pw", b"a"), seal(b"pw", b"b"));
        assert_ne!(seal(b"pw", b"a")[..NONCE_LEN], seal(b"pv", b"a")[..NONCE_LEN]);
    }
}

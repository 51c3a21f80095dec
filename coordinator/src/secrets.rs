//! Sealing secrets at rest (DESIGN §8, G9): job passwords are encrypted with the
//! cluster's secret key (ChaCha20-Poly1305 from ring, random nonce per seal) before
//! they are proposed, so the Raft log, snapshots and state rows only hold ciphertext.
//! The key lives in `<data-dir>/secret.key` (mode 0600).

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
    /// The ciphertext is damaged, or was sealed with another key or for another use.
    #[error("the sealed secret cannot be opened (wrong key or damaged data)")]
    Open,
}

/// The cluster's secret key.
pub struct SecretKey {
    key: LessSafeKey,
    rng: SystemRandom,
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
        Ok(Self { key: LessSafeKey::new(unbound), rng: SystemRandom::new() })
    }

    /// Fresh random key bytes.
    pub fn generate() -> Result<[u8; KEY_LEN], SealError> {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new().fill(&mut bytes).map_err(|_| SealError::Random)?;
        Ok(bytes)
    }

    /// Encrypts `plaintext`, binding `associated` (which must be given again to open).
    pub fn seal(&self, plaintext: &[u8], associated: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SealError::Random)?;
        let mut out = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(associated),
                &mut out,
            )
            .map_err(|_| SealError::Random)?;
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
}

//! What the origin serves: [`Content`] (fixed bytes or a deterministic pattern of any
//! length), how a file's content changes from one version to the next, its validators
//! (ETag, Last-Modified), and helpers for tests to check a downloaded file byte for byte.
//!
//! Nothing here touches a socket; serving and fault injection live in `serve` and `body`.

use std::io::Read as _;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;

/// `Sat, 01 Aug 2026 10:00:00 GMT`: the Last-Modified date of generation 0.
const BASE_LAST_MODIFIED_UNIX: u64 = 1_785_578_400;

/// The body of one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// These exact bytes (held in memory: keep them small).
    Bytes(Bytes),
    /// `len` deterministic pseudo-random bytes generated on the fly from `seed`; byte `i`
    /// is computable from `i` alone (see [`pattern_bytes`]), so any range is cheap and a
    /// file of hundreds of MiB costs no memory.
    Pattern {
        /// Selects the byte stream; different seeds give unrelated streams.
        seed: u64,
        /// Length in bytes.
        len: u64,
    },
}

impl Content {
    /// The length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Self::Bytes(b) => b.len() as u64,
            Self::Pattern { len, .. } => *len,
        }
    }

    /// Whether the content has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `len` bytes from `offset` (fewer at the end of the content).
    pub fn slice(&self, offset: u64, len: u64) -> Bytes {
        let start = offset.min(self.len());
        let end = start.saturating_add(len).min(self.len());
        match self {
            // Both bounds are at most `b.len()`, so they fit in usize.
            Self::Bytes(b) => b.slice(start as usize..end as usize),
            Self::Pattern { seed, .. } => Bytes::from(pattern_bytes(*seed, start, end - start)),
        }
    }

    /// The SHA-256 of the bytes.
    pub fn sha256(&self) -> [u8; 32] {
        use sha2::{Digest as _, Sha256};
        const STEP: u64 = 1024 * 1024;
        let mut hasher = Sha256::new();
        let mut offset = 0;
        while offset < self.len() {
            hasher.update(self.slice(offset, STEP));
            offset += STEP;
        }
        hasher.finalize().into()
    }

    /// The content of the next `version`s of a file whose first version is `self`:
    /// a pattern moves to seed `seed + version`; fixed bytes are each XORed with a
    /// non-zero pattern byte, so every byte differs from version 0.
    pub(super) fn at_version(&self, version: u64) -> Self {
        if version == 0 {
            return self.clone();
        }
        match self {
            Self::Pattern { seed, len } => {
                Self::Pattern { seed: seed.wrapping_add(version), len: *len }
            }
            Self::Bytes(b) => {
                let mask = pattern_bytes(version, 0, b.len() as u64);
                Self::Bytes(b.iter().zip(mask).map(|(byte, m)| byte ^ (m | 1)).collect())
            }
        }
    }

    /// A short identity of the content (not of its version), for the ETag.
    pub(super) fn identity(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        match self {
            Self::Bytes(b) => {
                hasher.update(b"bytes");
                hasher.update(b);
            }
            Self::Pattern { seed, len } => {
                hasher.update(b"pattern");
                hasher.update(&seed.to_le_bytes());
                hasher.update(&len.to_le_bytes());
            }
        }
        hex::encode(&hasher.finalize().as_bytes()[..8])
    }
}

impl From<Vec<u8>> for Content {
    fn from(bytes: Vec<u8>) -> Self {
        Self::Bytes(Bytes::from(bytes))
    }
}

impl From<&'static [u8]> for Content {
    fn from(bytes: &'static [u8]) -> Self {
        Self::Bytes(Bytes::from_static(bytes))
    }
}

/// One file registered at the origin: its first content and how often it changed.
#[derive(Clone, Debug)]
pub(super) struct FileEntry {
    /// The content as registered (version 0).
    base: Content,
    /// How many times the content changed since it was registered.
    version: u64,
    /// The origin-wide generation at the last registration or change; it sets
    /// Last-Modified, so replacing a file also moves its date.
    generation: u64,
    /// `base` at `version`, kept so fixed bytes are not transformed per request.
    current: Content,
    /// The identity of `base`, computed once.
    identity: String,
    /// The SHA-256 the origin declares in `Repr-Digest`, if any (true or not); a
    /// content change drops it.
    declared_sha256: Option<[u8; 32]>,
}

impl FileEntry {
    /// A newly registered file.
    pub(super) fn new(base: Content, generation: u64) -> Self {
        let identity = base.identity();
        Self {
            current: base.clone(),
            base,
            version: 0,
            generation,
            identity,
            declared_sha256: None,
        }
    }

    /// Declares `sha256` in `Repr-Digest` from now on (`None`: no header).
    pub(super) fn declare_sha256(&mut self, sha256: Option<[u8; 32]>) {
        self.declared_sha256 = sha256;
    }

    /// Moves to the next version (new bytes, ETag and Last-Modified).
    pub(super) fn bump(&mut self, generation: u64) {
        self.version += 1;
        self.generation = generation;
        self.current = self.base.at_version(self.version);
        self.declared_sha256 = None;
    }

    /// A snapshot of the current version.
    pub(super) fn info(&self) -> FileInfo {
        let date = UNIX_EPOCH + Duration::from_secs(BASE_LAST_MODIFIED_UNIX + self.generation);
        FileInfo {
            content: self.current.clone(),
            version: self.version,
            etag: format!("\"{}-v{}\"", self.identity, self.version),
            last_modified: httpdate::fmt_http_date(date),
            repr_digest: self.declared_sha256.map(|sha256| {
                use base64::Engine as _;
                format!("sha-256=:{}:", base64::engine::general_purpose::STANDARD.encode(sha256))
            }),
        }
    }
}

/// The current version of a file, as the origin serves it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    /// The bytes served now (for a pattern: `seed + version`).
    pub content: Content,
    /// How many times the content changed since the file was added (0 at first).
    pub version: u64,
    /// The strong ETag, quotes included: `"<content identity>-v<version>"`.
    pub etag: String,
    /// The Last-Modified date: `Sat, 01 Aug 2026 10:00:00 GMT` plus one second per
    /// origin-wide generation (each `add_file` and each content change is one).
    pub last_modified: String,
    /// The `Repr-Digest` header sent with it, if the file declares a digest.
    pub repr_digest: Option<String>,
}

impl FileInfo {
    /// Last-Modified as a time.
    pub fn last_modified_time(&self) -> Option<SystemTime> {
        httpdate::parse_http_date(&self.last_modified).ok()
    }
}

/// The splitmix64 finalizer: a bijective avalanche mix of 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Word `k` (bytes `8k..8k+8`, little-endian) of the pattern stream of `seed`.
fn pattern_word(key: u64, k: u64) -> u64 {
    mix(key.wrapping_add(k.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15)))
}

/// `len` bytes of the pattern of `seed` starting at byte `offset`: byte `i` is byte
/// `i % 8` of `splitmix64(mix(seed) + (i / 8 + 1) * golden)`, so any range can be
/// generated without the bytes before it.
pub fn pattern_bytes(seed: u64, offset: u64, len: u64) -> Vec<u8> {
    let key = mix(seed);
    let byte = |i: u64| pattern_word(key, i / 8).to_le_bytes()[(i % 8) as usize];
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    let mut out = Vec::with_capacity(len);
    // Up to the first word boundary byte by byte, then whole words, then the tail.
    let mut i = offset;
    while out.len() < len && !i.is_multiple_of(8) {
        out.push(byte(i));
        i += 1;
    }
    let words = (len - out.len()) / 8;
    for k in 0..words as u64 {
        out.extend_from_slice(&pattern_word(key, i / 8 + k).to_le_bytes());
    }
    i += words as u64 * 8;
    while out.len() < len {
        out.push(byte(i));
        i += 1;
    }
    out
}

/// Whether the file at `path` holds exactly the `len` bytes of the pattern of `seed`
/// (read in 1 MiB pieces, never whole). Blocking: call it from `spawn_blocking` in
/// async tests handling large files.
pub fn file_matches_pattern(path: &Path, seed: u64, len: u64) -> anyhow::Result<bool> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let actual = file.metadata().with_context(|| format!("cannot stat {}", path.display()))?;
    if actual.len() != len {
        return Ok(false);
    }
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        let n = file.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            return Ok(offset == len);
        }
        if offset + n as u64 > len || buf[..n] != pattern_bytes(seed, offset, n as u64)[..] {
            return Ok(false);
        }
        offset += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn any_range_of_a_pattern_is_a_slice_of_the_whole(
            seed: u64, offset in 0u64..200, len in 0u64..200,
        ) {
            let whole = pattern_bytes(seed, 0, 400);
            let part = pattern_bytes(seed, offset, len);
            prop_assert_eq!(&part[..], &whole[offset as usize..(offset + len) as usize]);
        }

        #[test]
        fn content_slices_clamp_to_the_end(offset in 0u64..80, len in 0u64..80) {
            let pattern = Content::Pattern { seed: 7, len: 50 };
            let bytes = Content::Bytes(Bytes::from(pattern_bytes(7, 0, 50)));
            prop_assert_eq!(pattern.slice(offset, len), bytes.slice(offset, len));
        }
    }

    #[test]
    fn versions_change_every_byte_and_the_etag() {
        let base = Content::Bytes(Bytes::from_static(b"hello world"));
        let mut file = FileEntry::new(base.clone(), 0);
        let first = file.info();
        file.bump(1);
        let second = file.info();
        assert_ne!(first.etag, second.etag);
        assert_ne!(first.last_modified, second.last_modified);
        assert_eq!(first.last_modified, "Sat, 01 Aug 2026 10:00:00 GMT");
        assert_eq!(second.last_modified, "Sat, 01 Aug 2026 10:00:01 GMT");
        let (Content::Bytes(a), Content::Bytes(b)) = (&first.content, &second.content) else {
            panic!("fixed bytes stay fixed bytes");
        };
        assert!(a.iter().zip(b.iter()).all(|(x, y)| x != y));
        assert_eq!(
            Content::Pattern { seed: 3, len: 9 }.at_version(2),
            Content::Pattern { seed: 5, len: 9 }
        );
    }

    #[test]
    fn seeds_give_different_streams() {
        assert_ne!(pattern_bytes(1, 0, 64), pattern_bytes(2, 0, 64));
        assert_ne!(pattern_bytes(0, 0, 64), vec![0u8; 64]);
    }

    #[test]
    fn files_on_disk_are_compared_streaming() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f");
        let len = (1 << 20) + 123;
        std::fs::write(&path, pattern_bytes(9, 0, len))?;
        assert!(file_matches_pattern(&path, 9, len)?);
        assert!(!file_matches_pattern(&path, 10, len)?);
        assert!(!file_matches_pattern(&path, 9, len + 1)?);
        let mut bytes = pattern_bytes(9, 0, len);
        bytes[1 << 20] ^= 1;
        std::fs::write(&path, bytes)?;
        assert!(!file_matches_pattern(&path, 9, len)?);
        Ok(())
    }
}

//! The BITS file model: remote and local names, byte ranges (`BG_FILE_RANGE` with
//! `BG_LENGTH_TO_EOF`), per-file progress, validation state and the temporary name.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
#[cfg(feature = "openapi")]
use utoipa::ToSchema;

use crate::ids::JobId;
use crate::transfer::{ChunkRecord, RemoteInfo};

/// `BG_LENGTH_TO_EOF`: a range length meaning "to the end of the remote file".
pub const LENGTH_TO_EOF: u64 = u64::MAX;

/// `BG_FILE_RANGE`: `length` bytes from `offset` of the remote file.
///
/// In JSON the length may be the string `"eof"` (= `BG_LENGTH_TO_EOF`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct FileRange {
    /// First byte of the range in the remote file.
    pub offset: u64,
    /// Number of bytes, or `"eof"`.
    #[cfg_attr(feature = "openapi", schema(value_type = RangeLengthSchema))]
    #[serde(serialize_with = "ser_length", deserialize_with = "de_length")]
    pub length: u64,
}

/// OpenAPI shape of a range length: a byte count or `"eof"`.
#[cfg(feature = "openapi")]
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(as = RangeLength)]
enum RangeLengthSchema {
    /// A byte count.
    Bytes(u64),
    /// `"eof"`: to the end of the remote file.
    Eof(String),
}

impl FileRange {
    /// True if the range reads to the end of the file.
    pub fn to_eof(&self) -> bool {
        self.length == LENGTH_TO_EOF
    }

    /// One past the last byte, or `None` for a range to EOF (or an overflowing one).
    pub fn end(&self) -> Option<u64> {
        if self.to_eof() { None } else { self.offset.checked_add(self.length) }
    }
}

impl std::str::FromStr for FileRange {
    type Err = String;

    /// `OFFSET:LENGTH` as bitsadmin takes it, `LENGTH` a byte count or `eof`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (offset, length) =
            text.split_once(':').ok_or_else(|| format!("range {text:?} is not OFFSET:LENGTH"))?;
        let offset = offset
            .trim()
            .parse()
            .map_err(|_| format!("range {text:?}: the offset is not a byte count"))?;
        let length = match length.trim() {
            l if l.eq_ignore_ascii_case("eof") => LENGTH_TO_EOF,
            l => l
                .parse()
                .map_err(|_| format!("range {text:?}: the length is not a byte count or eof"))?,
        };
        Ok(Self { offset, length })
    }
}

fn ser_length<S: Serializer>(length: &u64, s: S) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() && *length == LENGTH_TO_EOF {
        s.serialize_str("eof")
    } else {
        s.serialize_u64(*length)
    }
}

fn de_length<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    if !d.is_human_readable() {
        return u64::deserialize(d);
    }
    struct LengthVisitor;
    impl serde::de::Visitor<'_> for LengthVisitor {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a byte count or \"eof\"")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom("a range length cannot be negative"))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<u64, E> {
            if v.eq_ignore_ascii_case("eof") {
                Ok(LENGTH_TO_EOF)
            } else {
                v.parse().map_err(|_| E::custom("a range length is a byte count or \"eof\""))
            }
        }
    }
    d.deserialize_any(LengthVisitor)
}

/// A file to add to a job (`BG_FILE_INFO`, plus ranges for `AddFileWithRanges`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewFile {
    /// The URL on the server (download source or upload target), at most 2,200 characters.
    pub remote_url: String,
    /// Absolute path on the job's home node.
    pub local_path: String,
    /// Byte ranges to download, concatenated in this order; empty means the whole file.
    #[serde(default)]
    pub ranges: Vec<FileRange>,
    /// The SHA-256 the downloaded file must have, 64 hex digits (download jobs without
    /// ranges): checked before the file counts as transferred, and peers' verified
    /// copies of the same content may serve it whatever their URL.
    #[serde(default, with = "crate::codec::since_11")]
    pub sha256: Option<String>,
}

/// `BG_FILE_PROGRESS`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct FileProgress {
    /// Size in bytes; `null` (`BG_SIZE_UNKNOWN`) until known.
    pub bytes_total: Option<u64>,
    /// Bytes transferred so far.
    pub bytes_transferred: u64,
    /// True once the file is available to the user (renamed into place by Complete).
    pub completed: bool,
}

/// A file of a job as the replicated queue holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFile {
    /// The URL on the server, exactly as given (no escape processing, as BITS).
    pub remote_url: String,
    /// Absolute path on the home node.
    pub local_path: String,
    /// Requested ranges, in order; empty means the whole file.
    pub ranges: Vec<FileRange>,
    /// The hidden file beside the destination that receives the bytes until Complete.
    pub temporary_name: String,
    /// Size and bytes so far.
    pub progress: FileProgress,
    /// All bytes are durable in the temporary file.
    pub transferred: bool,
    /// `SetValidationState`: the owner declared the content valid.
    pub validated: bool,
    /// What the last probe learned about the remote file (size, validators).
    pub remote: Option<RemoteInfo>,
    /// Chunk size of the file's plan; 0 until the file is probed.
    pub chunk_size: u64,
    /// Chunks durable in the temporary file, by plan index. Cleared when the file is
    /// transferred (its [`content_digest`](Self::content_digest) remains), unless the
    /// file is offered to peers ([`crate::peer_cache::keeps_chunks`]).
    pub chunks: Vec<ChunkRecord>,
    /// Bytes of [`chunks`](Self::chunks) that came from peers' copies rather than the
    /// origin (`GetPeerDownloadStats`).
    pub bytes_from_peers: u64,
    /// The copy was withdrawn from the peer cache (it served bytes that did not match
    /// their digest, or its node's cache limits dropped it).
    pub withdrawn: bool,
    /// Hash list of the finished file (see [`crate::transfer::content_digest`]).
    pub content_digest: Option<[u8; 32]>,
    /// The last response's headers (`BITS_FILE_PROPERTY_ID_HTTP_RESPONSE_HEADERS`).
    pub response_headers: Vec<String>,
    /// The SHA-256 the owner expects (lowercase hex), if given with the file.
    #[serde(default, with = "crate::codec::since_11")]
    pub expected_sha256: Option<String>,
}

impl JobFile {
    /// A new, untransferred file.
    pub fn new(job: JobId, index: usize, spec: NewFile) -> Self {
        let temporary_name = temporary_name(&spec.local_path, job, index);
        Self {
            remote_url: spec.remote_url,
            local_path: spec.local_path,
            ranges: spec.ranges,
            temporary_name,
            progress: FileProgress::default(),
            transferred: false,
            validated: false,
            remote: None,
            chunk_size: 0,
            chunks: Vec::new(),
            bytes_from_peers: 0,
            withdrawn: false,
            content_digest: None,
            response_headers: Vec::new(),
            expected_sha256: spec.sha256.map(|hex| hex.to_ascii_lowercase()),
        }
    }

    /// Counts the recorded chunks into the progress and the bytes from peers.
    pub fn count_chunks(&mut self) {
        self.progress.bytes_transferred = self.chunks.iter().map(|c| c.len).sum();
        self.bytes_from_peers = self.chunks.iter().filter(|c| c.from_peer).map(|c| c.len).sum();
    }

    /// Forgets every byte: the remote changed, or the content was declared invalid.
    pub fn restart(&mut self) {
        self.progress.bytes_transferred = 0;
        self.progress.bytes_total = None;
        self.transferred = false;
        self.remote = None;
        self.chunk_size = 0;
        self.chunks.clear();
        self.bytes_from_peers = 0;
        self.withdrawn = false;
        self.content_digest = None;
    }
}

/// The temporary name for file `index` of `job`: hidden, in the destination directory,
/// carrying the job id so that Cancel and recovery can find it.
pub fn temporary_name(local_path: &str, job: JobId, index: usize) -> String {
    let dir = match local_path.rfind('/') {
        Some(0) | None => "",
        Some(slash) => &local_path[..slash],
    };
    format!("{dir}/.ferry-{}-{index}.tmp", job.0.simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_length_accepts_eof_in_json_only_as_text() {
        let r: FileRange = serde_json::from_str(r#"{"offset":100,"length":"eof"}"#).expect("eof");
        assert!(r.to_eof());
        assert_eq!(serde_json::to_string(&r).expect("ser"), r#"{"offset":100,"length":"eof"}"#);
        let r: FileRange = serde_json::from_str(r#"{"offset":1,"length":5}"#).expect("bytes");
        assert_eq!(r.end(), Some(6));
        assert!(serde_json::from_str::<FileRange>(r#"{"offset":1,"length":-5}"#).is_err());
        assert!(serde_json::from_str::<FileRange>(r#"{"offset":1,"length":"x"}"#).is_err());
    }

    #[test]
    fn ranges_parse_like_bitsadmin() {
        assert_eq!("100:200".parse(), Ok(FileRange { offset: 100, length: 200 }));
        assert_eq!("900:eof".parse(), Ok(FileRange { offset: 900, length: LENGTH_TO_EOF }));
        assert!("900".parse::<FileRange>().is_err());
        assert!("-1:5".parse::<FileRange>().is_err());
        assert!("1:x".parse::<FileRange>().is_err());
    }

    #[test]
    fn temporary_name_is_hidden_beside_the_destination() {
        let job: JobId = "6a2f1c4e-9a0b-4c55-8d2e-0123456789ab".parse().expect("id");
        assert_eq!(
            temporary_name("/srv/data/file.iso", job, 3),
            "/srv/data/.ferry-6a2f1c4e9a0b4c558d2e0123456789ab-3.tmp"
        );
        assert_eq!(
            temporary_name("/file", job, 0),
            "/.ferry-6a2f1c4e9a0b4c558d2e0123456789ab-0.tmp"
        );
    }
}

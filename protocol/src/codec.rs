//! The one binary codec for everything Ferry persists or sends between nodes: bincode 2
//! (serde mode) behind [`encode`]/[`decode`], with a format version byte in front, a size
//! limit on every decode, and trailing bytes rejected.
//!
//! Switching the encoding later (postcard is the planned exit, see rust-stack.md §5)
//! touches only this file: bump [`FORMAT_VERSION`] and keep a decoder for the old one.
//!
//! # Versions and upgrades
//! The version byte names the layout of the value behind it. A format change that only
//! appends (a new enum variant last, a new table, a new trailing section of a snapshot
//! file) leaves every older value readable as it is: the build reads each version from
//! [`OLDEST_READABLE_VERSION`] to [`FORMAT_VERSION`], so a data directory of the
//! previous format opens and its rows are rewritten in the new one as they change
//! (`tests/fixtures/format-N` holds one per format; the upgrade test opens them).
//!
//! A value is written with the oldest version that has its layout: only values that
//! contain something new (see [`needs_version`]) carry the new byte. So during a
//! rolling upgrade the members still on the previous build read everything the
//! upgraded ones write, except the new kinds of values, which arrive only once an
//! operator uses the new feature (docs/operations.md, "Upgrading"). A change that is not
//! append-only must bump [`OLDEST_READABLE_VERSION`] too, or keep a decoder for the old
//! layout here.
//!
//! # Fields appended to a struct
//! A field added to an existing struct (a new job property, say) is marked
//! `#[serde(default, with = "codec::since_11")]` (one module per format, see
//! [`since_11`]). Such a field is written only in values whose version byte is at least
//! its format: a value holding it with its default value keeps the older layout and
//! byte (encoded again in the newer layout if something else in it needs the newer
//! byte), and a value of an older version decodes it as the default. JSON and other
//! self-describing formats see an ordinary field.

use std::cell::Cell;

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The newest version this build writes (and reads). Version 2 (the download
/// engine: runs, chunks, credentials) does not read version 1 data: no release shipped it.
/// Version 4 added the upload client's state to jobs and back-end outcomes to upload
/// sessions; version 5 the jobs' helper cap; version 6 the peer cache and fleets;
/// version 7 the remote file's declared SHA-256; version 9 the cluster's principals
/// (their commands and rows: append-only, so version 8 values read as they are);
/// version 10 the `ReplaceRemotePrefix` command (append-only too); version 11 the
/// HTTP method and bandwidth cap of jobs and the expected SHA-256 of files (fields
/// appended to structs, see [`since_11`]).
pub const FORMAT_VERSION: u8 = 11;

/// The oldest version this build reads: data written by builds of this format onwards
/// opens without conversion.
pub const OLDEST_READABLE_VERSION: u8 = 8;

/// The version a value is written with when it contains nothing newer.
const BASE_WRITE_VERSION: u8 = OLDEST_READABLE_VERSION;

thread_local! {
    /// The newest layout the value being encoded on this thread uses.
    static NEEDED: Cell<u8> = const { Cell::new(BASE_WRITE_VERSION) };
    /// The version byte the value being encoded on this thread is written with, once
    /// known (its second pass); 0 while the first pass finds it out.
    static WRITING: Cell<u8> = const { Cell::new(0) };
    /// The oldest format of an appended field the first pass left out because it held
    /// its default (`u8::MAX`: none).
    static OMITTED: Cell<u8> = const { Cell::new(u8::MAX) };
    /// The version byte of the value being decoded on this thread.
    static READING: Cell<u8> = const { Cell::new(FORMAT_VERSION) };
}

/// Called by the `Serialize` impl of a type that appeared in format `version`: the
/// value being encoded is written with at least that version byte, so a build that
/// cannot read it refuses it as an unknown version instead of misreading it.
pub fn needs_version(version: u8) {
    NEEDED.with(|needed| needed.set(needed.get().max(version)));
}

/// Largest value [`decode`] accepts: control messages, log entries, stored rows.
pub const FRAME_LIMIT: usize = 16 * 1024 * 1024;

type FrameConfig = Configuration<LittleEndian, Varint, Limit<FRAME_LIMIT>>;

const FRAME: FrameConfig = bincode::config::standard().with_limit::<FRAME_LIMIT>();

/// Why a value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The input is empty: not even a version byte.
    #[error("empty input: no format version byte")]
    Empty,
    /// The input is longer than the decoder accepts.
    #[error("input of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Input length.
        len: usize,
        /// The limit that applied.
        limit: usize,
    },
    /// The version byte is not one this build reads.
    #[error(
        "unknown format version {0} (this build reads versions {OLDEST_READABLE_VERSION} to {FORMAT_VERSION})"
    )]
    UnknownVersion(u8),
    /// The bytes after the version do not form a value of the expected type.
    #[error("malformed input: {0}")]
    Malformed(String),
    /// A value was decoded but bytes were left over.
    #[error("{0} trailing bytes after the value")]
    TrailingBytes(usize),
    /// The value could not be encoded.
    #[error("cannot encode: {0}")]
    Encode(String),
}

/// Encodes `value` with the version byte in front; refuses a value larger than
/// [`FRAME_LIMIT`], which [`decode`] could not read back.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    encode_within(value, FRAME_LIMIT)
}

fn encode_within<T: Serialize + ?Sized>(value: &T, limit: usize) -> Result<Vec<u8>, CodecError> {
    // An encode inside a `Serialize` impl has a state of its own.
    let outer = (NEEDED.get(), WRITING.get(), OMITTED.get());
    let out = encode_passes(value);
    NEEDED.set(outer.0);
    WRITING.set(outer.1);
    OMITTED.set(outer.2);
    let out = out?;
    if out.len() > limit.saturating_add(1) {
        return Err(CodecError::TooLarge { len: out.len(), limit });
    }
    Ok(out)
}

/// The length of what [`encode`] would give for `value`, found without keeping the
/// bytes (no buffer is allocated): what a proposal weighs in its batch.
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<usize, CodecError> {
    let outer = (NEEDED.get(), WRITING.get(), OMITTED.get());
    let len = count_passes(value);
    NEEDED.set(outer.0);
    WRITING.set(outer.1);
    OMITTED.set(outer.2);
    len
}

/// [`encode_passes`] into a byte counter: the version byte and the body's length.
fn count_passes<T: Serialize + ?Sized>(value: &T) -> Result<usize, CodecError> {
    NEEDED.set(BASE_WRITE_VERSION);
    WRITING.set(0);
    OMITTED.set(u8::MAX);
    let mut count = ByteCount(0);
    bincode::serde::encode_into_std_write(value, &mut count, FRAME)
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    let version = NEEDED.get();
    if OMITTED.get() <= version {
        WRITING.set(version);
        count.0 = 0;
        bincode::serde::encode_into_std_write(value, &mut count, FRAME)
            .map_err(|e| CodecError::Encode(e.to_string()))?;
    }
    Ok(1 + count.0)
}

/// A writer that only counts the bytes written to it.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The version byte [`encode`] would write for `value`: the newest format whose layout
/// it uses (what every reader of it must read), found without keeping the bytes.
pub fn version_of<T: Serialize + ?Sized>(value: &T) -> Result<u8, CodecError> {
    let outer = (NEEDED.get(), WRITING.get(), OMITTED.get());
    NEEDED.set(BASE_WRITE_VERSION);
    WRITING.set(0);
    let written = bincode::serde::encode_into_std_write(value, &mut std::io::sink(), FRAME);
    let version = NEEDED.get();
    NEEDED.set(outer.0);
    WRITING.set(outer.1);
    OMITTED.set(outer.2);
    written.map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(version)
}

/// The first pass finds the version byte the value needs; a second one is needed only
/// if it left out an appended field that a value of that version holds.
fn encode_passes<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    NEEDED.set(BASE_WRITE_VERSION);
    WRITING.set(0);
    OMITTED.set(u8::MAX);
    let mut out = vec![BASE_WRITE_VERSION];
    bincode::serde::encode_into_std_write(value, &mut out, FRAME)
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    let version = NEEDED.get();
    if OMITTED.get() <= version {
        WRITING.set(version);
        out.truncate(1);
        bincode::serde::encode_into_std_write(value, &mut out, FRAME)
            .map_err(|e| CodecError::Encode(e.to_string()))?;
    }
    out[0] = version;
    Ok(out)
}

/// Decodes a value of at most [`FRAME_LIMIT`] bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let body = body(bytes, FRAME_LIMIT)?;
    let outer = READING.replace(bytes[0]);
    let decoded = bincode::serde::decode_from_slice(body, FRAME);
    READING.set(outer);
    finish(decoded, body.len())
}

/// Writes a field appended to its struct in format `since` (see the module doc).
fn serialize_since<T, S>(since: u8, value: &T, serializer: S) -> Result<S::Ok, S::Error>
where
    T: Serialize + Default + PartialEq,
    S: Serializer,
{
    if serializer.is_human_readable() {
        return value.serialize(serializer);
    }
    let writing = WRITING.get();
    if writing == 0 && *value == T::default() {
        // Left out: the older layout, unless the value turns out to need `since` anyway.
        OMITTED.set(OMITTED.get().min(since));
        return serializer.serialize_unit();
    }
    if writing != 0 && writing < since {
        // The value's version predates the field, which holds its default here.
        return serializer.serialize_unit();
    }
    needs_version(since);
    value.serialize(serializer)
}

/// Reads a field appended to its struct in format `since`: the default in values of
/// older versions.
fn deserialize_since<'de, T, D>(since: u8, deserializer: D) -> Result<T, D::Error>
where
    T: Deserialize<'de> + Default,
    D: Deserializer<'de>,
{
    if deserializer.is_human_readable() || READING.get() >= since {
        T::deserialize(deserializer)
    } else {
        Ok(T::default())
    }
}

/// Fields appended in format 11: `#[serde(default, with = "codec::since_11")]`.
pub mod since_11 {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// See [`super::serialize_since`].
    pub fn serialize<T, S>(value: &T, serializer: S) -> Result<S::Ok, S::Error>
    where
        T: Serialize + Default + PartialEq,
        S: Serializer,
    {
        super::serialize_since(11, value, serializer)
    }

    /// See [`super::deserialize_since`].
    pub fn deserialize<'de, T, D>(deserializer: D) -> Result<T, D::Error>
    where
        T: Deserialize<'de> + Default,
        D: Deserializer<'de>,
    {
        super::deserialize_since(11, deserializer)
    }

    /// For a nullable field (`Option<Option<T>>`): JSON `null` reads as `Some(None)`
    /// (clear), an absent field as `None` (through `#[serde(default)]`).
    pub fn nullable<'de, T, D>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
    where
        T: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        if deserializer.is_human_readable() {
            Option::<T>::deserialize(deserializer).map(Some)
        } else {
            super::deserialize_since(11, deserializer)
        }
    }
}

fn body(bytes: &[u8], limit: usize) -> Result<&[u8], CodecError> {
    if bytes.len() > limit.saturating_add(1) {
        return Err(CodecError::TooLarge { len: bytes.len(), limit });
    }
    match bytes.split_first() {
        None => Err(CodecError::Empty),
        Some((version, body)) if (OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(version) => {
            Ok(body)
        }
        Some((&other, _)) => Err(CodecError::UnknownVersion(other)),
    }
}

fn finish<T>(
    decoded: Result<(T, usize), bincode::error::DecodeError>,
    len: usize,
) -> Result<T, CodecError> {
    let (value, read) = decoded.map_err(|e| CodecError::Malformed(e.to_string()))?;
    if read != len {
        return Err(CodecError::TrailingBytes(len - read));
    }
    Ok(value)
}

/// Bytes encoded as one block (length, then the bytes), not as a sequence of numbers:
/// serde writes a `Vec<u8>` element by element, which costs a call per byte — for the
/// megabytes of a piece travelling between nodes, tens of milliseconds of a runtime
/// thread that Raft's heartbeats share.
pub use serde_bytes::ByteBuf;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_byte_leads_and_is_checked() {
        let bytes = encode(&"hello".to_string()).expect("encode");
        assert_eq!(bytes[0], OLDEST_READABLE_VERSION, "nothing new: the oldest layout");
        let mut newest = bytes.clone();
        newest[0] = FORMAT_VERSION;
        assert_eq!(decode::<String>(&newest).expect("every readable version"), "hello");
        let mut wrong = bytes.clone();
        wrong[0] = 99;
        assert!(matches!(decode::<String>(&wrong), Err(CodecError::UnknownVersion(99))));
        assert!(matches!(decode::<String>(&[]), Err(CodecError::Empty)));
    }

    /// A type of a newer format.
    struct Newer;

    impl Serialize for Newer {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            needs_version(FORMAT_VERSION);
            serializer.serialize_u8(1)
        }
    }

    #[test]
    fn a_value_holding_something_newer_carries_the_newer_version() {
        assert_eq!(encode(&(7u32, Newer)).expect("encode")[0], FORMAT_VERSION);
        assert_eq!(encode(&Some(Newer)).expect("encode")[0], FORMAT_VERSION);
        // The mark belongs to one value: the next one is written as before.
        assert_eq!(encode(&(7u32, None::<Newer>)).expect("encode")[0], OLDEST_READABLE_VERSION);
    }

    /// A struct that gained `added` in format 11.
    #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
    struct Grown {
        kept: u32,
        #[serde(default, with = "since_11")]
        added: Option<String>,
    }

    /// The same struct before format 11.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Before {
        kept: u32,
    }

    #[test]
    fn an_appended_field_is_written_only_when_it_holds_something() {
        let plain = encode(&Grown { kept: 7, added: None }).expect("encode");
        assert_eq!(plain, encode(&Before { kept: 7 }).expect("encode"), "the older layout");
        assert_eq!(decode::<Before>(&plain).expect("an older build reads it"), Before { kept: 7 });
        let grown = Grown { kept: 7, added: Some("x".into()) };
        let bytes = encode(&grown).expect("encode");
        assert_eq!(bytes[0], 11);
        assert_eq!(version_of(&grown).expect("version"), 11);
        assert_eq!(version_of(&Grown::default()).expect("version"), BASE_WRITE_VERSION);
        assert_eq!(decode::<Grown>(&bytes).expect("decode"), grown);
        // A value of an older version reads the field as its default.
        let mut old = encode(&Before { kept: 9 }).expect("encode");
        old[0] = 10;
        assert_eq!(decode::<Grown>(&old).expect("decode"), Grown { kept: 9, added: None });
    }

    #[test]
    fn a_newer_value_writes_every_appended_field_even_the_default_ones() {
        // The first element needs format 11, the second was left out in the first pass:
        // both are written, so that a reader of version 11 finds every field.
        let mixed = vec![
            Grown { kept: 1, added: Some("a".into()) },
            Grown { kept: 2, added: None },
            Grown { kept: 3, added: Some(String::new()) },
        ];
        let bytes = encode(&mixed).expect("encode");
        assert_eq!(bytes[0], 11);
        assert_eq!(decode::<Vec<Grown>>(&bytes).expect("decode"), mixed);
        let reversed: Vec<Grown> = mixed.into_iter().rev().collect();
        assert_eq!(
            decode::<Vec<Grown>>(&encode(&reversed).expect("encode")).expect("decode"),
            reversed
        );
        // JSON sees an ordinary, optional field.
        let json: Grown = serde_json::from_str(r#"{"kept":4}"#).expect("json");
        assert_eq!(json, Grown { kept: 4, added: None });
    }

    #[test]
    fn encoded_len_is_the_length_encode_gives() {
        let same = |bytes: Vec<u8>, len: usize| assert_eq!(bytes.len(), len);
        same(encode(&7u32).expect("encode"), encoded_len(&7u32).expect("len"));
        let plain = Grown { kept: 300, added: None };
        same(encode(&plain).expect("encode"), encoded_len(&plain).expect("len"));
        let grown = Grown { kept: 1, added: Some("abc".into()) };
        same(encode(&grown).expect("encode"), encoded_len(&grown).expect("len"));
        // A second pass writes the fields the first one left out.
        let mixed = vec![Grown { kept: 2, added: None }, grown, Grown::default()];
        same(encode(&mixed).expect("encode"), encoded_len(&mixed).expect("len"));
        assert!(encoded_len(&mixed).expect("len") > encode(&(2u32, 1u32, 0u32)).expect("e").len());
    }

    #[test]
    fn byte_bufs_round_trip_as_one_block() {
        let bytes = ByteBuf::from((0..=255u8).cycle().take(100_000).collect::<Vec<u8>>());
        let encoded = encode(&bytes).expect("encode");
        // Version byte, varint length (5 bytes here), then the bytes themselves.
        assert!(encoded.len() <= 100_000 + 6, "{} bytes", encoded.len());
        assert_eq!(decode::<ByteBuf>(&encoded).expect("decode"), bytes);
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&7u32).expect("encode");
        bytes.push(0);
        assert!(matches!(decode::<u32>(&bytes), Err(CodecError::TrailingBytes(1))));
    }

    #[test]
    fn forged_lengths_do_not_allocate() {
        // Version, then a varint length prefix of 2^40 for a string or a vector.
        let forged = [FORMAT_VERSION, 253, 0, 0, 0, 0, 0, 1, 0, 0];
        assert!(decode::<String>(&forged).is_err());
        assert!(decode::<Vec<u64>>(&forged).is_err());
    }

    #[test]
    fn what_cannot_be_decoded_is_not_encoded() {
        let big = vec![7u8; FRAME_LIMIT + 1];
        assert!(matches!(encode(&big), Err(CodecError::TooLarge { .. })));
    }

    #[test]
    fn oversized_input_is_refused_before_decoding() {
        let big = vec![FORMAT_VERSION; FRAME_LIMIT + 2];
        assert!(matches!(decode::<Vec<u8>>(&big), Err(CodecError::TooLarge { .. })));
    }
}

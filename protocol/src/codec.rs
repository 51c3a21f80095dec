//! The one binary codec for everything Ferry persists or sends between nodes: bincode 2
//! (serde mode) behind [`encode`]/[`decode`], with a format version byte in front, a size
//! limit on every decode, and trailing bytes rejected.
//!
//! Switching the encoding later (postcard is the planned exit, see rust-stack.md §5)
//! touches only this file: bump [`FORMAT_VERSION`] and keep a decoder for the old one.

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The version byte written in front of every encoded value. Version 2 (the download
/// engine: runs, chunks, credentials) does not read version 1 data: no release shipped it.
/// Version 4 added the upload client's state to jobs and back-end outcomes to upload
/// sessions; version 5 the jobs' helper cap; version 6 the peer cache and fleets;
/// version 7 the remote file's declared SHA-256.
pub const FORMAT_VERSION: u8 = 8;

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
    #[error("unknown format version {0} (this build reads version {FORMAT_VERSION})")]
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
    let mut out = vec![FORMAT_VERSION];
    bincode::serde::encode_into_std_write(value, &mut out, FRAME)
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    if out.len() > limit.saturating_add(1) {
        return Err(CodecError::TooLarge { len: out.len(), limit });
    }
    Ok(out)
}

/// Decodes a value of at most [`FRAME_LIMIT`] bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let body = body(bytes, FRAME_LIMIT)?;
    finish(bincode::serde::decode_from_slice(body, FRAME), body.len())
}

fn body(bytes: &[u8], limit: usize) -> Result<&[u8], CodecError> {
    if bytes.len() > limit.saturating_add(1) {
        return Err(CodecError::TooLarge { len: bytes.len(), limit });
    }
    match bytes.split_first() {
        None => Err(CodecError::Empty),
        Some((&FORMAT_VERSION, body)) => Ok(body),
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
        assert_eq!(bytes[0], FORMAT_VERSION);
        let mut wrong = bytes.clone();
        wrong[0] = 99;
        assert!(matches!(decode::<String>(&wrong), Err(CodecError::UnknownVersion(99))));
        assert!(matches!(decode::<String>(&[]), Err(CodecError::Empty)));
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

//! Helpers shared by Ferry's fuzz targets: the codec round-trip check, and copies of the
//! peer messages that `ferry-node` keeps private.
//!
//! What does not live here: the targets themselves (`fuzz_targets/`), and any decoding
//! logic of its own — every check calls the code the daemon runs.

use ferry_protocol::codec;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Decodes `frame` as a `T` with the production decoder and, when it decodes, checks
/// the round trip: the value encodes (it fits the frame limit, since it came from a
/// frame), decodes back to an equal value, and encodes to the same bytes again.
///
/// The input bytes themselves need not come back: bincode reads some non-minimal
/// encodings (a varint written long) that it never writes.
pub fn round_trip<T>(frame: &[u8])
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let Ok(value) = codec::decode::<T>(frame) else { return };
    let bytes = codec::encode(&value).expect("a decoded value encodes");
    assert!(bytes.len() <= frame.len(), "re-encoding grew: {} > {}", bytes.len(), frame.len());
    let again = codec::decode::<T>(&bytes).expect("an encoded value decodes");
    assert_eq!(value, again, "decode(encode(x)) != x");
    assert_eq!(bytes, codec::encode(&again).expect("encodes"), "encoding is not stable");
}

/// Splits a fuzz input into a selector byte and the rest.
pub fn split(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(first, rest)| (*first, rest))
}

pub mod peer;

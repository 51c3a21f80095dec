//! Every message nodes send each other, decoded from arbitrary bytes with the
//! production codec (the first input byte picks the type): the peer endpoint's
//! envelope and answer, each peer request and its answer, the join exchange, and the
//! event bus's frames. A value that decodes must round-trip. Openraft's own RPCs
//! (`PeerRequest::Raft`'s payload) are not decoded here: see the README.

#![no_main]

use ferry_fuzz::peer::{
    Answer, ChunkAnswer, ChunkRequest, ClusterError, CopyAnswer, CopyRequest, Envelope, JoinAnswer,
    JoinRequest, NodeAddr, PeerRequest, Written,
};
use ferry_fuzz::{round_trip, split};
use ferry_protocol::api::MemberProbe;
use ferry_protocol::codec::{self, ByteBuf};
use ferry_protocol::event::{Delivery, Subscribe, SubscribeAnswer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((which, frame)) = split(data) else { return };
    match which % 20 {
        0 => {
            // A request frame as the endpoint reads it, then its body as the handler
            // reads it: the nested decode the daemon performs.
            round_trip::<Envelope>(frame);
            if let Ok(envelope) = codec::decode::<Envelope>(frame) {
                round_trip::<PeerRequest>(&envelope.body);
            }
        }
        1 => round_trip::<Answer>(frame),
        2 => round_trip::<PeerRequest>(frame),
        // The answers, one type per request.
        3 => round_trip::<Result<Written, ClusterError>>(frame),
        4 => round_trip::<Result<(), ClusterError>>(frame),
        5 => round_trip::<Result<u64, ClusterError>>(frame),
        6 => round_trip::<Result<bool, ClusterError>>(frame),
        7 => round_trip::<Result<MemberProbe, ClusterError>>(frame),
        8 => round_trip::<Result<Vec<u8>, ClusterError>>(frame),
        9 => round_trip::<Result<ChunkAnswer, ClusterError>>(frame),
        10 => round_trip::<Result<CopyAnswer, ClusterError>>(frame),
        11 => round_trip::<ChunkRequest>(frame),
        12 => round_trip::<CopyRequest>(frame),
        13 => round_trip::<NodeAddr>(frame),
        // Joining: unauthenticated callers reach this decoder.
        14 => round_trip::<JoinRequest>(frame),
        15 => round_trip::<Result<JoinAnswer, String>>(frame),
        // The event bus (ALPN ferry-events/1).
        16 => round_trip::<Subscribe>(frame),
        17 => round_trip::<SubscribeAnswer>(frame),
        18 => round_trip::<Delivery>(frame),
        _ => round_trip::<ByteBuf>(frame),
    }
});

//! Every message nodes send each other, decoded from arbitrary bytes with the
//! production codec (the first input byte picks the type): the peer endpoint's
//! envelope and answer, the call envelope (`Call`) and each request and answer of
//! `ferry_protocol::peer`, the join exchange, and the event bus's frames. A value that
//! decodes must round-trip. Openraft's own RPCs (`RaftRpc`'s payload) are not decoded
//! here: see the README.

#![no_main]

use ferry_fuzz::peer::{
    AddMember, Answer, Call, ChunkAnswer, ChunkRequest, CopyAnswer, CopyRequest, Envelope,
    JoinAnswer, JoinRequest, NodeAddr, RaftRpc, RemoteError, ReplyData, UpdateAddress,
    UploadPiece, Write, Written,
};
use ferry_fuzz::{round_trip, split};
use ferry_protocol::api::MemberProbe;
use ferry_protocol::codec::{self, ByteBuf};
use ferry_protocol::event::{Delivery, Subscribe, SubscribeAnswer};
use libfuzzer_sys::fuzz_target;

/// A request body as the router decodes it, by the kind its call names.
fn request(kind: &str, body: &[u8]) {
    match kind {
        "raft" => round_trip::<RaftRpc>(body),
        "write" => round_trip::<Write>(body),
        "add-member" => round_trip::<AddMember>(body),
        "update-address" => round_trip::<UpdateAddress>(body),
        "upload-piece" => round_trip::<UploadPiece>(body),
        "fetch-chunk" => round_trip::<ChunkRequest>(body),
        "peer-copy" => round_trip::<CopyRequest>(body),
        "reply-data" => round_trip::<ReplyData>(body),
        // Ping, ReadIndex and Probe are unit structs: nothing to decode.
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((which, frame)) = split(data) else { return };
    match which % 20 {
        0 => {
            // A request frame as the endpoint reads it, then its call and body as the
            // router reads them: the nested decode the daemon performs.
            round_trip::<Envelope>(frame);
            if let Ok(envelope) = codec::decode::<Envelope>(frame)
                && let Ok(call) = codec::decode::<Call>(&envelope.body)
            {
                request(&call.kind, &call.body);
            }
        }
        1 => round_trip::<Answer>(frame),
        2 => {
            round_trip::<Call>(frame);
            if let Ok(call) = codec::decode::<Call>(frame) {
                request(&call.kind, &call.body);
            }
        }
        // The answers, one type per request.
        3 => round_trip::<Result<Written, RemoteError>>(frame),
        4 => round_trip::<Result<(), RemoteError>>(frame),
        5 => round_trip::<Result<u64, RemoteError>>(frame),
        6 => round_trip::<Result<bool, RemoteError>>(frame),
        7 => round_trip::<Result<MemberProbe, RemoteError>>(frame),
        8 => round_trip::<Result<ByteBuf, RemoteError>>(frame),
        9 => round_trip::<Result<ChunkAnswer, RemoteError>>(frame),
        10 => round_trip::<Result<CopyAnswer, RemoteError>>(frame),
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

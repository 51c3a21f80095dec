//! The binary codec: arbitrary bytes decoded, with the production size limit, as each
//! type Ferry persists or carries in Raft entries (the first input byte picks the
//! type). A value that decodes must encode, decode back equal and encode the same again.

#![no_main]

use ferry_fuzz::{peer::SnapshotHeader, round_trip, split};
use ferry_protocol::command::{CommandResult, FileChanges};
use ferry_protocol::credentials::SealedCredential;
use ferry_protocol::event::{Cursor, Event, JobEvent};
use ferry_protocol::peer_cache::ContentKey;
use ferry_protocol::queue::{
    QueueImage, QueueMeta, RequestKey, RequestRecord, UploadCommand, UploadSession,
};
use ferry_protocol::transfer::{ChunkRecord, EngineReport, RemoteInfo};
use ferry_protocol::{
    Batch, BatchReply, Command, Job, JobFile, NewJob, PropertyChanges, Proposal, Queue,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((which, frame)) = split(data) else { return };
    match which % 21 {
        // Raft log entries and their replies.
        0 => {
            round_trip::<Batch>(frame);
            // Every node applies every entry: apply must refuse, never panic.
            if let Ok(batch) = ferry_protocol::codec::decode::<Batch>(frame) {
                let mut queue = Queue::new(Default::default());
                let reply = queue.apply_batch(&batch);
                assert_eq!(reply.0.len(), batch.proposals.len(), "one result per proposal");
            }
        }
        1 => round_trip::<Proposal>(frame),
        2 => round_trip::<Command>(frame),
        3 => round_trip::<BatchReply>(frame),
        4 => round_trip::<CommandResult>(frame),
        // State machine rows (redb) and snapshot frames.
        5 => round_trip::<Job>(frame),
        6 => round_trip::<QueueMeta>(frame),
        7 => round_trip::<RequestKey>(frame),
        8 => round_trip::<RequestRecord>(frame),
        9 => round_trip::<UploadSession>(frame),
        10 => round_trip::<SnapshotHeader>(frame),
        11 => {
            round_trip::<QueueImage>(frame);
            // An image that decodes is one a snapshot install rebuilds a queue from.
            if let Ok(image) = ferry_protocol::codec::decode::<QueueImage>(frame) {
                let _ = Queue::from_image(image).to_image();
            }
        }
        // The event history.
        12 => round_trip::<Event>(frame),
        13 => round_trip::<JobEvent>(frame),
        14 => round_trip::<Cursor>(frame),
        // Parts of commands and jobs, decoded on their own for depth.
        15 => round_trip::<EngineReport>(frame),
        16 => round_trip::<UploadCommand>(frame),
        17 => round_trip::<PropertyChanges>(frame),
        18 => round_trip::<JobFile>(frame),
        19 => round_trip::<(SealedCredential, ContentKey, RemoteInfo, ChunkRecord)>(frame),
        _ => round_trip::<(NewJob, FileChanges)>(frame),
    }
});

//! openraft's storage conformance suite against Ferry's redb log store and state
//! machine, each test on fresh database files in a temporary directory.

use ferry_node::raft::{LogStore, StateMachineStore, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

struct RedbStores;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RedbStores {
    async fn build(
        &self,
    ) -> Result<(TempDir, LogStore, StateMachineStore), openraft::StorageError<u64>> {
        let dir = TempDir::new()
            .map_err(|e| openraft::StorageIOError::write(openraft::AnyError::new(&e)))?;
        let log = LogStore::open(&dir.path().join("raft-log.redb"))?;
        let sm = StateMachineStore::open(&dir.path().join("state.redb"), Default::default())?;
        Ok((dir, log, sm))
    }
}

#[test]
fn redb_store_passes_openraft_suite() {
    Suite::test_all(RedbStores).expect("the redb store conforms to openraft's storage contract");
}

mod snapshot {
    use std::collections::BTreeSet;

    use ferry_node::raft::{NodeAddr, StateMachineStore, TypeConfig};
    use ferry_protocol::command::{Batch, Command, JobAction, NewJob, Proposal};
    use ferry_protocol::queue::UploadCommand;
    use ferry_protocol::{Caller, JobId, NewFile, Principal, Role, Timestamp};
    use openraft::storage::RaftStateMachine;
    use openraft::{
        CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftSnapshotBuilder,
    };

    fn log_id(index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    fn batch(index: u64) -> Entry<TypeConfig> {
        let caller = Caller { principal: Principal::new("alice").expect("name"), role: Role::User };
        let id = JobId(uuid::Uuid::from_u128(u128::from(index)));
        let create = Command::CreateJob {
            id,
            home_node: 1,
            spec: NewJob {
                display_name: format!("job {index}"),
                job_type: Default::default(),
                properties: Default::default(),
                files: vec![NewFile {
                    remote_url: format!("https://o.example/{index}"),
                    local_path: format!("/srv/{index}"),
                    ranges: vec![],
                    sha256: None,
                }],
            },
        };
        let resume = Command::Lifecycle { job: id, action: JobAction::Resume };
        // An upload session too: snapshots and reopening must carry them.
        let upload = Command::Upload(UploadCommand::Create {
            session: format!("{{session-{index}}}"),
            path: format!("in/{index}.bin"),
        });
        let proposals = [create, resume, upload]
            .into_iter()
            .map(|command| Proposal { request_id: None, caller: caller.clone(), command })
            .collect();
        Entry {
            log_id: log_id(index),
            payload: EntryPayload::Normal(Batch { time: Timestamp(index * 1000), proposals }),
        }
    }

    /// Applies commit their rows without an fsync (the log holds the entries), so the
    /// state a snapshot is built from must reach the disk before the log may be purged
    /// behind the snapshot: a crash right after the build must find it there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_built_snapshot_is_covered_by_the_state_on_disk() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("a.redb");
        let mut store = StateMachineStore::open(&path, Default::default())?;
        store.apply((1..6).map(batch)).await?;
        let built = store.get_snapshot_builder().await.build_snapshot().await?;
        assert_eq!(built.meta.last_log_id, Some(log_id(5)));
        // A crash now: the file as the disk has it, without what the process held.
        let crashed = dir.path().join("crashed.redb");
        std::fs::copy(&path, &crashed)?;
        let mut reopened = StateMachineStore::open(&crashed, Default::default())?;
        let (applied, _) = reopened.applied_state().await?;
        assert_eq!(applied, built.meta.last_log_id, "the snapshot's state is on disk");
        assert_eq!(reopened.read().queue.to_image(), store.read().queue.to_image());
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_installed_snapshot_survives_reopening() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut leader = StateMachineStore::open(&dir.path().join("a.redb"), Default::default())?;
        let membership = Membership::new(vec![BTreeSet::from([1u64])], ());
        let mut entries =
            vec![Entry { log_id: log_id(1), payload: EntryPayload::Membership(membership) }];
        entries.extend((2..40).map(batch));
        leader.apply(entries).await?;
        let built = leader.get_snapshot_builder().await.build_snapshot().await?;
        assert_eq!(built.meta.last_log_id, Some(log_id(39)));

        // A fresh store installs it...
        let follower_path = dir.path().join("b.redb");
        let mut follower = StateMachineStore::open(&follower_path, Default::default())?;
        follower.apply([batch(100)]).await?; // state the snapshot must replace
        // As openraft does: received into the file the store hands out, then installed.
        let mut receiving = follower.begin_receiving_snapshot().await?;
        let mut data = built.snapshot;
        tokio::io::copy(&mut *data, &mut *receiving).await?;
        follower.install_snapshot(&built.meta, receiving).await?;
        let kept: Vec<String> = std::fs::read_dir(dir.path().join("b.snapshots"))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        assert_eq!(kept, [format!("{}.snap", built.meta.snapshot_id)], "one file, no leftovers");
        let expected = leader.read().queue.to_image();
        assert_eq!(expected.uploads.len(), 38, "the leader holds the upload sessions");
        assert_eq!(follower.read().queue.to_image(), expected);
        drop(follower);

        // ...and has it after reopening from disk: rows, applied id, membership, snapshot.
        let mut reopened = StateMachineStore::open(&follower_path, Default::default())?;
        assert_eq!(reopened.read().queue.to_image(), expected);
        let (applied, members) = reopened.applied_state().await?;
        assert_eq!(applied, Some(log_id(39)));
        assert_eq!(members.membership().voter_ids().collect::<Vec<_>>(), vec![1]);
        let current = reopened.get_current_snapshot().await?.expect("stored");
        assert_eq!(current.meta, built.meta);
        let _: Option<NodeAddr> = members.membership().get_node(&1).cloned();
        Ok(())
    }

    /// A subscriber waiting for the next entry's events on a node that then installs a
    /// snapshot must be told that the events the snapshot skipped over are not there
    /// (a gap), not be handed the next entry's events as if nothing were missing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_installed_under_a_live_subscriber_is_a_gap_in_its_stream()
    -> anyhow::Result<()> {
        use ferry_protocol::event::{Cursor, Delivery, EventFilter, StartAt};
        let dir = tempfile::tempdir()?;
        let mut leader = StateMachineStore::open(&dir.path().join("a.redb"), Default::default())?;
        leader.apply((1..40).map(batch)).await?;
        let built = leader.get_snapshot_builder().await.build_snapshot().await?;

        let mut follower = StateMachineStore::open(&dir.path().join("b.redb"), Default::default())?;
        follower.apply((1..3).map(batch)).await?;
        let admin = Caller { principal: Principal::new("root").expect("name"), role: Role::Admin };
        let everything = EventFilter { all_users: true, ..EventFilter::default() };
        // Caught up: it waits for the next entry's events.
        let mut subscription = follower.events().subscribe(admin, everything, StartAt::Now).await?;
        let waiting_at = subscription.position();
        assert!(waiting_at > Cursor { index: 2, sub: 0 }, "{waiting_at}");
        let wait = tokio::time::timeout(std::time::Duration::from_millis(300), subscription.next());
        assert!(wait.await.is_err(), "a delivery although nothing was applied");

        let mut receiving = follower.begin_receiving_snapshot().await?;
        let mut data = built.snapshot;
        tokio::io::copy(&mut *data, &mut *receiving).await?;
        follower.install_snapshot(&built.meta, receiving).await?;
        follower.apply([batch(40)]).await?;
        match next(&mut subscription).await? {
            Delivery::Gap { from, oldest } => {
                assert_eq!(from, waiting_at);
                assert_eq!(oldest.index, 40, "the history starts after the snapshot");
            }
            Delivery::Event(event) => {
                anyhow::bail!("entry {} was delivered over the hole of 3..39", event.cursor)
            }
        }
        match next(&mut subscription).await? {
            Delivery::Event(event) => assert_eq!(event.cursor, Cursor { index: 40, sub: 0 }),
            gap => anyhow::bail!("a second gap: {gap:?}"),
        }
        Ok(())
    }

    /// The subscription's next delivery, within 10 s.
    async fn next(
        subscription: &mut ferry_node::events::Subscription,
    ) -> anyhow::Result<ferry_protocol::event::Delivery> {
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), subscription.next());
        let next = next.await.map_err(|_| anyhow::anyhow!("no delivery in 10 s"))??;
        next.ok_or_else(|| anyhow::anyhow!("the stream ended"))
    }
}

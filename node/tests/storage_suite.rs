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
        let sm = StateMachineStore::open(&dir.path().join("state.redb"))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn redb_store_passes_openraft_suite() {
    Suite::test_all(RedbStores).expect("the redb store conforms to openraft's storage contract");
}

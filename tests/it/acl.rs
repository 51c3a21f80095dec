//! `SetFileACLFlags` on local (`file://`) sources: Complete gives the file the source's
//! owner, group, permission bits and `user.*` attributes, as the flags ask and as far
//! as the principal's sandbox allows (an unmapped user may not give files away).

use std::os::unix::fs::{MetadataExt, PermissionsExt, chown};
use std::path::Path;
use std::time::Duration;

use ferry_coordinator::{Client, ClientError};
use ferry_protocol::command::JobAction;
use ferry_protocol::job::acl;
use ferry_protocol::{BitsCode, JobState, PropertyChanges};
use ferry_tests::origin::pattern_bytes;
use ferry_tests::{Node, tokens};

use crate::hostile::is_root;
use crate::support::{start_download, transfer_node, wait_for};

const OTHER_UID: u32 = 4321;
const OTHER_GID: u32 = 8765;

/// Downloads `source` to `dest` with ACL flags `flags` and answers Complete's result.
async fn copy(
    node: &Node,
    client: &Client,
    source: &Path,
    dest: &Path,
    flags: u32,
) -> anyhow::Result<Result<(), ClientError>> {
    let properties = PropertyChanges { acl_flags: Some(flags), ..PropertyChanges::default() };
    let url = format!("file://{}", source.display());
    let id = start_download(client, &[(url, dest.to_path_buf())], properties).await?;
    wait_for(node, client, id, &[JobState::Transferred], Duration::from_secs(30)).await?;
    let completed = client.act(id, JobAction::Complete).await.map(|_| ());
    if completed.is_err() {
        assert_eq!(client.job(id).await?.state, JobState::Transferred, "the job stays");
    }
    Ok(completed)
}

#[tokio::test]
async fn acl_flags_copy_owner_group_mode_and_attributes_of_a_local_source() -> anyhow::Result<()> {
    if !is_root() {
        println!("SKIPPED: giving a file another owner needs ferryd to run as root");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let source = dir.path().join("source.bin");
    std::fs::write(&source, pattern_bytes(3, 0, 50_000))?;
    chown(&source, Some(OTHER_UID), Some(OTHER_GID))?;
    std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o4640))?;
    let attributes =
        rustix::fs::setxattr(&source, "user.note", b"kept", rustix::fs::XattrFlags::empty());
    let has_attributes = attributes.is_ok();
    let node = transfer_node("allow_file_urls = true").await?;
    let admin = node.client(Some(tokens::ADMIN))?;

    // Everything: owner, group, mode (never the set-id bit), attributes.
    let all = dir.path().join("all.bin");
    copy(&node, &admin, &source, &all, acl::VALID).await??;
    let meta = std::fs::metadata(&all)?;
    assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o7777), (OTHER_UID, OTHER_GID, 0o640));
    assert_eq!(std::fs::read(&all)?, std::fs::read(&source)?);
    if has_attributes {
        let mut value = [0u8; 16];
        let len = rustix::fs::getxattr(&all, "user.note", &mut value)?;
        assert_eq!(&value[..len], b"kept");
    }

    // Group only: ferryd's user, the source's group, the usual mode.
    let group = dir.path().join("group.bin");
    copy(&node, &admin, &source, &group, acl::GROUP).await??;
    let meta = std::fs::metadata(&group)?;
    assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o7777), (0, OTHER_GID, 0o644));

    // No flags: as any download.
    let none = dir.path().join("none.bin");
    copy(&node, &admin, &source, &none, 0).await??;
    let meta = std::fs::metadata(&none)?;
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o644));

    // A user acting as ferryd may not give a file away: Complete fails, nothing placed.
    let alice = node.client(Some(tokens::ALICE))?;
    let theirs = dir.path().join("theirs.bin");
    let refused = copy(&node, &alice, &source, &theirs, acl::OWNER).await?;
    let Err(ClientError::Api(problem)) = refused else { panic!("{refused:?}") };
    assert_eq!(
        (problem.status, problem.code),
        (409, BitsCode::E_ACCESSDENIED),
        "{}",
        problem.detail
    );
    assert!(!theirs.exists());
    // The mode alone is the user's to copy.
    let mode = dir.path().join("mode.bin");
    copy(&node, &alice, &source, &mode, acl::DACL).await??;
    assert_eq!(std::fs::metadata(&mode)?.mode() & 0o7777, 0o640);
    Ok(())
}

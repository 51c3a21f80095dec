//! A hostile user against ferryd running as root (issue 15): one ordinary user token,
//! local write access to its own directories, and the wish to read or change anything
//! else. Every case must be refused with nothing created, changed or read outside the
//! user's roots: a sentinel tree of files of other owners and modes, outside every
//! root, is compared before and after each test.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_coordinator::{Client, TokenEntry};
use ferry_protocol::{
    BitsCode, JobAction, JobState, JobType, NewFile, NewJob, PropertyChanges, Role,
};
use ferry_tests::origin::{Content, Knobs, Origin, OriginConfig, file_matches_pattern};
use ferry_tests::{Node, NodeOptions, ferry, tokens};

use crate::support::{start_download, temporary_name, wait_for};

const KIB: u64 = 1024;
/// A user whose token entry gives no roots at all.
const EVE: &str = "eve-token-0123456789abc";

/// A test's directories: two roots and a sentinel tree outside both.
pub(crate) struct Tree {
    /// Holds everything (removed at the end).
    _base: tempfile::TempDir,
    /// The default roots (alice's and bob's).
    pub(crate) shared: PathBuf,
    /// The sentinel tree: nobody's roots.
    pub(crate) outside: PathBuf,
    before: BTreeMap<PathBuf, Entry>,
}

/// What a sentinel file looks like.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    len: u64,
    mode: u32,
    uid: u32,
    digest: Option<blake3::Hash>,
}

impl Tree {
    /// Makes the directories and the sentinel tree, and records it.
    pub(crate) fn new() -> anyhow::Result<Self> {
        let base = tempfile::Builder::new().prefix("ferry-hostile-").tempdir()?;
        let shared = base.path().join("shared");
        let outside = base.path().join("outside");
        std::fs::create_dir_all(&shared)?;
        std::fs::create_dir_all(outside.join("etc/cron.d"))?;
        std::fs::create_dir_all(outside.join("etc/d"))?;
        // Local users may write into the shared root (as users of a real host could).
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777))?;
        let files: [(&str, &[u8], u32); 5] = [
            ("etc/shadow", b"root:$6$secret-hash:19000:0:99999:7:::\n", 0o600),
            ("etc/cron.d/job", b"* * * * * root /bin/true\n", 0o644),
            ("victim", b"the victim's bytes\n", 0o600),
            ("public.txt", b"readable by all\n", 0o644),
            ("other-users-file", b"owned by nobody\n", 0o640),
        ];
        for (name, bytes, mode) in files {
            let path = outside.join(name);
            std::fs::write(&path, bytes)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        }
        if is_root() {
            std::os::unix::fs::chown(outside.join("other-users-file"), Some(65534), Some(65534))?;
        }
        let before = snapshot(&outside)?;
        Ok(Self { _base: base, shared, outside, before })
    }

    /// Fails if anything in the sentinel tree was created, removed, grown, truncated,
    /// re-moded, re-owned or rewritten.
    pub(crate) fn assert_untouched(&self) -> anyhow::Result<()> {
        let after = snapshot(&self.outside)?;
        anyhow::ensure!(
            after == self.before,
            "the sentinel tree changed:\nbefore {:#?}\nafter {:#?}",
            self.before,
            after
        );
        Ok(())
    }
}

/// Every entry under `dir`, symlinks not followed.
fn snapshot(dir: &Path) -> anyhow::Result<BTreeMap<PathBuf, Entry>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        let kind = if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
            "dir"
        } else if meta.file_type().is_symlink() {
            "symlink"
        } else {
            "file"
        };
        let digest = (kind == "file").then(|| std::fs::read(&path).map(|b| blake3::hash(&b)));
        out.insert(
            path.clone(),
            Entry {
                kind,
                len: meta.len(),
                mode: meta.mode(),
                uid: meta.uid(),
                digest: digest.transpose()?,
            },
        );
    }
    Ok(out)
}

pub(crate) fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A node whose users alice and bob share the root `tree.shared`, eve has none, and
/// the admin may use the whole test directory.
pub(crate) async fn node(tree: &Tree, extra_config: &str) -> anyhow::Result<Node> {
    let mut eve = TokenEntry::new(EVE, "eve", Role::User);
    eve.roots = Some(Vec::new());
    let mut admin = TokenEntry::new(tokens::ADMIN, "root", Role::Admin);
    admin.roots = Some(vec![tree.shared.clone()]);
    let options = NodeOptions {
        tokens: vec![
            TokenEntry::new(tokens::ALICE, "alice", Role::User),
            TokenEntry::new(tokens::BOB, "bob", Role::User),
            eve,
            admin,
        ],
        transfer: format!(
            "destination_roots = [{:?}]\nchunk_size_bytes = 262144\nread_timeout_secs = 10",
            tree.shared.display().to_string()
        ),
        extra_config: extra_config.into(),
        ..NodeOptions::default()
    };
    Node::start(options).await
}

fn download(name: &str, url: String, local: &Path) -> NewJob {
    NewJob {
        display_name: name.into(),
        job_type: JobType::Download,
        properties: PropertyChanges::default(),
        files: vec![NewFile {
            remote_url: url,
            local_path: local.display().to_string(),
            ranges: vec![],
            sha256: None,
        }],
    }
}

/// Asserts `result` is a 403 with `E_ACCESSDENIED`.
fn assert_denied<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, ferry_coordinator::ClientError>,
) -> anyhow::Result<()> {
    let error = result.expect_err(what);
    anyhow::ensure!(
        error.code() == Some(BitsCode::E_ACCESSDENIED),
        "{what}: expected E_ACCESSDENIED, got {error}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_paths_outside_the_callers_roots_are_refused_at_the_api() -> anyhow::Result<()> {
    let tree = Tree::new()?;
    let node = node(&tree, "").await?;
    let alice = node.client(Some(tokens::ALICE))?;
    let eve = node.client(Some(EVE))?;
    let url = "http://127.0.0.1:9/f".to_string();

    // No roots: no local file at all, and the detail names the settings.
    let error = eve
        .create_job(&download("eve", url.clone(), &tree.shared.join("f")))
        .await
        .expect_err("eve has no roots");
    assert_eq!(error.code(), Some(BitsCode::E_ACCESSDENIED));
    assert!(error.to_string().contains("roots"), "{error}");

    // Outside the roots: destinations, upload sources, reply files, client
    // certificates, added files, fleets, and through the CLI.
    let outside = tree.outside.join("etc/cron.d/evil");
    assert_denied(
        "a download outside",
        alice.create_job(&download("a", url.clone(), &outside)).await,
    )?;
    let mut upload = download("u", url.clone(), &tree.outside.join("etc/shadow"));
    upload.job_type = JobType::Upload;
    assert_denied("an upload of /etc/shadow", alice.create_job(&upload).await)?;
    let job = alice.create_job(&download("ok", url.clone(), &tree.shared.join("ok"))).await?;
    let file = NewFile {
        remote_url: url.clone(),
        local_path: outside.display().to_string(),
        ranges: vec![],
        sha256: None,
    };
    assert_denied("an added file outside", alice.add_files(job.id, vec![file]).await)?;
    let certificate = PropertyChanges {
        client_certificate: Some(Some(tree.outside.join("etc/shadow").display().to_string())),
        ..PropertyChanges::default()
    };
    assert_denied(
        "a client certificate outside",
        alice.set_properties(job.id, &certificate).await,
    )?;
    let reply = PropertyChanges {
        reply_file_name: Some(Some(outside.display().to_string())),
        ..PropertyChanges::default()
    };
    assert_denied("a reply file outside", alice.set_properties(job.id, &reply).await)?;
    let fleet = ferry_protocol::api::NewFleet {
        remote_url: url.clone(),
        local_path: outside.display().to_string(),
        nodes: Vec::new(),
        display_name: None,
        properties: PropertyChanges::default(),
        credentials: Vec::new(),
        sha256: None,
    };
    assert_denied("a fleet outside", alice.create_fleet(&fleet).await)?;
    // A file:// source names a local file too.
    let source = format!("file://{}", tree.outside.join("etc/shadow").display());
    let stolen = download("file", source, &tree.shared.join("stolen"));
    assert_denied("a file:// source outside", alice.create_job(&stolen).await)?;
    // A root's name is a whole component: `shared-evil` is not beneath `shared`.
    let sibling = PathBuf::from(format!("{}-evil/f", tree.shared.display()));
    assert_denied(
        "a sibling of the root",
        alice.create_job(&download("s", url.clone(), &sibling)).await,
    )?;
    let (code, _, stderr) = ferry(
        &node,
        tokens::ALICE,
        &["job", "add-file", &job.id.to_string(), &url, &outside.display().to_string()],
    )
    .await?;
    assert_ne!(code, 0, "the CLI refuses too");
    assert!(stderr.contains("E_ACCESSDENIED") || stderr.contains("0x80070005"), "{stderr}");

    tree.assert_untouched()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_below_a_root_lead_nowhere() -> anyhow::Result<()> {
    let tree = Tree::new()?;
    let origin = Origin::start(OriginConfig::default()).await?;
    origin.add_file("/f.bin", Content::Pattern { seed: 3, len: 64 * KIB });
    let node = node(&tree, "").await?;
    let alice = node.client(Some(tokens::ALICE))?;
    // A directory of the root that is a symlink to the sentinel tree.
    symlink(tree.outside.join("etc"), tree.shared.join("etc"))?;
    // And a file that is one.
    symlink(tree.outside.join("etc/shadow"), tree.shared.join("shadow"))?;

    let through = tree.shared.join("etc/cron.d/evil");
    let error = refused_on_the_home_node(&node, &alice, origin.url("/f.bin"), &through).await?;
    assert!(error.detail.contains("symbolic link"), "{}", error.detail);

    // A symlink at the destination is refused; its target is never touched.
    refused_on_the_home_node(&node, &alice, origin.url("/f.bin"), &tree.shared.join("shadow"))
        .await?;

    // An upload whose source is a symlink, or lies below one, reads nothing.
    for source in [tree.shared.join("shadow"), tree.shared.join("etc/shadow")] {
        let mut spec = download("up", origin.url("/bits/in"), &source);
        spec.job_type = JobType::Upload;
        let job = alice.create_job(&spec).await?;
        alice.act(job.id, JobAction::Resume).await?;
        let job =
            wait_for(&node, &alice, job.id, &[JobState::Error], Duration::from_secs(30)).await?;
        assert_eq!(job.error.map(|e| e.code), Some(BitsCode::E_ACCESSDENIED));
    }
    anyhow::ensure!(
        origin.requests().iter().all(|r| !r.path.starts_with("/bits")),
        "nothing was sent to the upload URL"
    );
    tree.assert_untouched()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_file_swapped_for_a_symlink_is_never_written_or_re_moded() -> anyhow::Result<()>
{
    let tree = Tree::new()?;
    let origin = Origin::start(OriginConfig::default()).await?;
    const SIZE: u64 = 2048 * KIB;
    origin.add_file("/big.bin", Content::Pattern { seed: 7, len: SIZE });
    // Slow enough to suspend in the middle.
    origin.set_knobs(Knobs { rate_limit_per_connection: Some(512 * KIB), ..Knobs::default() });
    let node = node(&tree, "").await?;
    let alice = node.client(Some(tokens::ALICE))?;
    let local = tree.shared.join("big.bin");
    let id = start_download(
        &alice,
        &[(origin.url("/big.bin"), local.clone())],
        PropertyChanges::default(),
    )
    .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while alice.job(id).await?.progress.bytes_transferred < 256 * KIB {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no progress\n{}", node.log_tail());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    alice.act(id, JobAction::Suspend).await?;
    tokio::time::sleep(Duration::from_millis(600)).await;

    // Defect 2: the temporary file becomes a symlink while the job is suspended.
    let temp = temporary_name(&alice, id).await?;
    std::fs::remove_file(&temp)?;
    symlink(tree.outside.join("victim"), &temp)?;
    origin.set_knobs(Knobs::default());
    alice.act(id, JobAction::Resume).await?;
    wait_for(&node, &alice, id, &[JobState::Transferred], Duration::from_secs(60)).await?;
    tree.assert_untouched()?;
    anyhow::ensure!(
        std::fs::symlink_metadata(&temp)?.file_type().is_file(),
        "the symlink was replaced by a new temporary file"
    );

    // Defect 3: the same swap right before Complete: nothing is re-moded or renamed,
    // and Complete says so (the job stays TRANSFERRED).
    std::fs::remove_file(&temp)?;
    symlink(tree.outside.join("victim"), &temp)?;
    let refused = alice.act(id, JobAction::Complete).await;
    let Err(ferry_coordinator::ClientError::Api(problem)) = refused else {
        anyhow::bail!("Complete over a swapped temporary file answered {refused:?}");
    };
    anyhow::ensure!(problem.status == 409, "{problem:?}");
    anyhow::ensure!(alice.job(id).await?.state == JobState::Transferred);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while std::fs::symlink_metadata(&temp).is_ok() {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the swapped name is still there");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::ensure!(!local.exists(), "a file that is not the download was not renamed into place");
    tree.assert_untouched()?;

    // Without a swap the same download completes byte for byte, mode 0644.
    let local = tree.shared.join("again.bin");
    download_and_complete(&node, &alice, origin.url("/big.bin"), &local).await?;
    assert!(file_matches_pattern(&local, 7, SIZE)?);
    assert_eq!(std::fs::metadata(&local)?.mode() & 0o777, 0o644);
    tree.assert_untouched()
}

/// Waits until `path` exists (a completed job's file).
async fn appears(node: &Node, path: &Path) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{} never appeared\n{}",
            path.display(),
            node.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Downloads `url` to `path` as `client`'s principal, completes the job and waits
/// for the file to appear.
async fn download_and_complete(
    node: &Node,
    client: &Client,
    url: String,
    path: &Path,
) -> anyhow::Result<()> {
    let id =
        start_download(client, &[(url, path.to_path_buf())], PropertyChanges::default()).await?;
    wait_for(node, client, id, &[JobState::Transferred], Duration::from_secs(30)).await?;
    client.act(id, JobAction::Complete).await?;
    appears(node, path).await
}

/// Downloads `url` to `path` as `client`'s principal and returns the job's error once
/// the home node refused it.
async fn refused_on_the_home_node(
    node: &Node,
    client: &Client,
    url: String,
    path: &Path,
) -> anyhow::Result<ferry_protocol::api::ErrorInfo> {
    let id =
        start_download(client, &[(url, path.to_path_buf())], PropertyChanges::default()).await?;
    let job = wait_for(node, client, id, &[JobState::Error], Duration::from_secs(30)).await?;
    let error = job.error.ok_or_else(|| anyhow::anyhow!("ERROR without an error"))?;
    anyhow::ensure!(error.code == BitsCode::E_ACCESSDENIED, "{}: {error:?}", path.display());
    Ok(error)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_never_replaces_another_users_file() -> anyhow::Result<()> {
    let tree = Tree::new()?;
    let origin = Origin::start(OriginConfig::default()).await?;
    origin.add_file("/a.bin", Content::Pattern { seed: 1, len: 32 * KIB });
    origin.add_file("/b.bin", Content::Pattern { seed: 2, len: 32 * KIB });
    let node = node(&tree, "").await?;
    let (alice, bob) = (node.client(Some(tokens::ALICE))?, node.client(Some(tokens::BOB))?);
    let shared = tree.shared.join("report.bin");
    download_and_complete(&node, &alice, origin.url("/a.bin"), &shared).await?;

    // Defect 9: bob names alice's completed download.
    let error = refused_on_the_home_node(&node, &bob, origin.url("/b.bin"), &shared).await?;
    assert!(error.detail.contains("belongs to someone other than bob"), "{}", error.detail);
    assert!(file_matches_pattern(&shared, 1, 32 * KIB)?, "alice's file is intact");

    // A file someone put there by hand is not bob's either.
    let planted = tree.shared.join("planted");
    std::fs::write(&planted, b"not bob's")?;
    refused_on_the_home_node(&node, &bob, origin.url("/b.bin"), &planted).await?;
    assert_eq!(std::fs::read(&planted)?, b"not bob's");

    // Alice replaces her own file.
    let id = start_download(
        &alice,
        &[(origin.url("/b.bin"), shared.clone())],
        PropertyChanges::default(),
    )
    .await?;
    wait_for(&node, &alice, id, &[JobState::Transferred], Duration::from_secs(30)).await?;
    alice.act(id, JobAction::Complete).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !file_matches_pattern(&shared, 2, 32 * KIB)? {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "not replaced\n{}",
            node.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tree.assert_untouched()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upload_server_follows_no_symlink_below_its_root() -> anyhow::Result<()> {
    use ferry_protocol::upload::{PROTOCOL_GUID, header};
    let tree = Tree::new()?;
    let uploads = tree.shared.join("uploads");
    std::fs::create_dir_all(uploads.join("in"))?;
    symlink(tree.outside.join("etc"), uploads.join("evil"))?;
    let config =
        format!("[upload]\nroot = {:?}\nallow_overwrite = true\n", uploads.display().to_string());
    let node = node(&tree, &config).await?;
    let client = crate::support::raw();
    let bits = |path: &str, packet: &str, extra: Vec<(&'static str, String)>, body: Vec<u8>| {
        let method = reqwest::Method::from_bytes(b"BITS_POST").expect("method");
        let mut request = client
            .request(method, format!("{}/bits/{path}", node.url().expect("url")))
            .bearer_auth(tokens::ALICE)
            .header(header::PACKET_TYPE, packet)
            .body(body);
        for (name, value) in extra {
            request = request.header(name, value);
        }
        request.send()
    };
    let create = |path: &'static str| {
        bits(
            path,
            "Create-Session",
            vec![(header::SUPPORTED_PROTOCOLS, PROTOCOL_GUID.into())],
            vec![],
        )
    };
    // Defect 10: a session below a symlink of the root is refused at once.
    let refused = create("evil/cron.d/job").await?;
    assert!(!refused.status().is_success(), "{}", refused.status());

    // A session whose directory becomes a symlink before its last fragment.
    let answer = create("in/data.bin").await?;
    assert!(answer.status().is_success(), "{}", answer.status());
    let session = answer.headers()[header::SESSION_ID].to_str()?.to_owned();
    std::fs::rename(uploads.join("in"), uploads.join("in.real"))?;
    symlink(tree.outside.join("etc/cron.d"), uploads.join("in"))?;
    let data = b"* * * * * root /tmp/evil\n".to_vec();
    let range = format!("bytes 0-{}/{}", data.len() - 1, data.len());
    let last = bits(
        "in/data.bin",
        "Fragment",
        vec![(header::SESSION_ID, session), (header::CONTENT_RANGE, range)],
        data,
    )
    .await?;
    assert!(!last.status().is_success(), "the final fragment cannot be placed: {}", last.status());
    tree.assert_untouched()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_mapped_to_an_os_user_has_that_users_rights_only() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("skipped: acting as another OS user needs ferryd to run as root");
        return Ok(());
    }
    const NOBODY: u32 = 65534;
    let tree = Tree::new()?;
    let origin = Origin::start(OriginConfig::default()).await?;
    origin.add_file("/m.bin", Content::Pattern { seed: 9, len: 40 * KIB });
    // A directory of the root that only root may write, and root's private file.
    let locked = tree.shared.join("locked");
    std::fs::create_dir(&locked)?;
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755))?;
    let private = tree.shared.join("root-only.key");
    std::fs::write(&private, b"root's key")?;
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600))?;

    let mut mallory = TokenEntry::new(tokens::ALICE, "mallory", Role::User);
    mallory.uid = Some(NOBODY);
    mallory.gid = Some(NOBODY);
    let options = NodeOptions {
        tokens: vec![mallory],
        transfer: format!(
            "destination_roots = [{:?}]\nread_timeout_secs = 10",
            tree.shared.display().to_string()
        ),
        ..NodeOptions::default()
    };
    let node = Node::start(options).await?;
    let client = node.client(Some(tokens::ALICE))?;

    // Created as the user: its file, owned by it.
    let mine = tree.shared.join("mine.bin");
    download_and_complete(&node, &client, origin.url("/m.bin"), &mine).await?;
    assert_eq!(std::fs::metadata(&mine)?.uid(), NOBODY);
    assert!(file_matches_pattern(&mine, 9, 40 * KIB)?);

    // The kernel refuses what the user may not do, though ferryd is root.
    refused_on_the_home_node(&node, &client, origin.url("/m.bin"), &locked.join("x.bin")).await?;
    let mut upload = download("up", origin.url("/bits/in"), &private);
    upload.job_type = JobType::Upload;
    let job = client.create_job(&upload).await?;
    client.act(job.id, JobAction::Resume).await?;
    let job = wait_for(&node, &client, job.id, &[JobState::Error], Duration::from_secs(30)).await?;
    assert_eq!(
        job.error.map(|e| e.code),
        Some(BitsCode::E_ACCESSDENIED),
        "root's file is not read"
    );
    // A file of another owner is never replaced.
    refused_on_the_home_node(&node, &client, origin.url("/m.bin"), &private).await?;
    assert_eq!(std::fs::read(&private)?, b"root's key");
    assert!(
        std::fs::read_dir(&locked)?.next().is_none(),
        "nothing was made in the locked directory"
    );
    tree.assert_untouched()
}

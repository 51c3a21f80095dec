//! `ferry transfer` (bitsadmin /transfer) against nginx: a 256 MiB file arrives
//! byte-identical; a failing transfer exits non-zero with the BITS error.

use ferry_tests::nginx::{Nginx, NginxOptions};
use ferry_tests::{ferry, tokens};

use crate::support::{hash_file, transfer_node, write_random};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_256_mib_from_nginx_is_byte_identical() -> anyhow::Result<()> {
    if !Nginx::available() {
        eprintln!("skipped: nginx is not installed");
        return Ok(());
    }
    let root = tempfile::tempdir()?;
    let want = write_random(&root.path().join("big.bin"), 256 << 20)?;
    let nginx = Nginx::start(NginxOptions::new(root.path())).await?;
    let node = transfer_node("chunk_size_bytes = 8388608").await?;
    let out = tempfile::tempdir()?;
    let local = out.path().join("big.bin");
    let local_arg = local.to_string_lossy().into_owned();
    let url = nginx.url("/big.bin");
    let started = std::time::Instant::now();
    let (code, stdout, stderr) = ferry(
        &node,
        tokens::ALICE,
        &["transfer", "--priority", "foreground", "--connections", "4", &url, &local_arg],
    )
    .await?;
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}\n{}", node.log_tail());
    println!("ferry transfer of 256 MiB from nginx: {:?}", started.elapsed());
    assert!(stdout.contains("Transfer complete"), "{stdout}");
    assert!(stderr.contains("MiB"), "a progress line with bytes: {stderr}");
    assert_eq!(hash_file(&local)?, want, "byte-identical");

    // A missing file: non-zero exit, the BITS error, and the job is gone.
    let missing = nginx.url("/missing.bin");
    let target = out.path().join("missing.bin").to_string_lossy().into_owned();
    let (code, _, stderr) =
        ferry(&node, tokens::ALICE, &["transfer", "--no-progress", &missing, &target]).await?;
    assert_ne!(code, 0);
    assert!(stderr.contains("BG_E_HTTP_ERROR_404") && stderr.contains("0x80190194"), "{stderr}");
    let (_, list, _) = ferry(&node, tokens::ALICE, &["job", "list"]).await?;
    assert!(list.contains("No jobs"), "the failed transfer's job was cancelled: {list}");
    Ok(())
}

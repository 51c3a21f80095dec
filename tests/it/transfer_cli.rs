//! `ferry transfer` (bitsadmin /transfer) against nginx: a 256 MiB file arrives
//! byte-identical; a failing transfer exits non-zero with the BITS error.

use std::io::Write;

use ferry_tests::nginx::{Nginx, NginxOptions};
use ferry_tests::{ferry, tokens};

use crate::support::transfer_node;

/// Writes `len` bytes of a xorshift stream, 1 MiB at a time.
fn write_random(path: &std::path::Path, len: usize) -> anyhow::Result<blake3::Hash> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut hasher = blake3::Hasher::new();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for word in buf.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(buf.len());
        file.write_all(&buf[..n])?;
        hasher.update(&buf[..n]);
        left -= n;
    }
    file.flush()?;
    Ok(hasher.finalize())
}

fn hash_file(path: &std::path::Path) -> anyhow::Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(path)?)?;
    Ok(hasher.finalize())
}

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

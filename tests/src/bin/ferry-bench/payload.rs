//! The files the download benchmark serves: pseudo-random bytes (incompressible, not
//! sparse, reproducible from a seed), written once with their blake3 hash, and the check
//! that a client's output matches them. Blocking file I/O; callers run it on
//! `spawn_blocking`.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::path::Path;

use anyhow::{Context as _, bail};

/// Bytes generated, written and hashed at a time.
const CHUNK: usize = 1 << 20;

/// A served file and what every client's copy of it must be.
#[derive(Clone, Debug)]
pub(crate) struct Expected {
    /// Path under the served root, which is also the URL path and the output name
    /// (relative to the client's output directory).
    pub(crate) name: String,
    /// Length in bytes.
    pub(crate) size: u64,
    /// blake3 of the content.
    pub(crate) hash: blake3::Hash,
}

/// A benchmark's temporary directory: `www/` is served, clients write to `out/`, their
/// logs go to `logs/`. Removed when dropped.
pub(crate) struct Workspace {
    /// Kept for its removal on drop.
    _dir: tempfile::TempDir,
    pub(crate) root: std::path::PathBuf,
    pub(crate) out: std::path::PathBuf,
    pub(crate) logs: std::path::PathBuf,
}

impl Workspace {
    /// A fresh workspace named after `bench`, serving one random file `name` of `bytes`
    /// bytes (from `seed`), and what clients must reproduce of it.
    pub(crate) async fn with_file(
        bench: &str,
        name: &str,
        bytes: u64,
        seed: u64,
    ) -> anyhow::Result<(Self, Expected)> {
        let dir = tempfile::Builder::new().prefix(&format!("ferry-bench-{bench}-")).tempdir()?;
        let (root, out, logs) =
            (dir.path().join("www"), dir.path().join("out"), dir.path().join("logs"));
        std::fs::create_dir_all(&logs)?;
        eprintln!("writing {} MiB under {}", bytes >> 20, dir.path().display());
        let file = {
            let (root, name) = (root.clone(), name.to_owned());
            tokio::task::spawn_blocking(move || write_random(&root, &name, bytes, seed)).await??
        };
        Ok((Self { _dir: dir, root, out, logs }, file))
    }
}

/// Writes `size` pseudo-random bytes derived from `seed` to `root/name` (creating parent
/// directories) and returns what clients must reproduce.
pub(crate) fn write_random(
    root: &Path,
    name: &str,
    size: u64,
    seed: u64,
) -> anyhow::Result<Expected> {
    let path = root.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let mut file =
        File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    // blake3's extendable output: fast (SIMD), incompressible, reproducible.
    let mut stream = blake3::Hasher::new_derive_key("ferry-bench payload 2025")
        .update(&seed.to_le_bytes())
        .finalize_xof();
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = size;
    while left > 0 {
        let n = usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK));
        let chunk = &mut buf[..n];
        stream.fill(chunk);
        hasher.update(chunk);
        file.write_all(chunk).with_context(|| format!("cannot write {}", path.display()))?;
        left -= n as u64;
    }
    file.sync_all().with_context(|| format!("cannot sync {}", path.display()))?;
    Ok(Expected { name: name.to_owned(), size, hash: hasher.finalize() })
}

/// Length and blake3 of the file at `path`.
fn hash_file(path: &Path) -> anyhow::Result<(u64, blake3::Hash)> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            return Ok((size, hasher.finalize()));
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
}

/// Checks that `dir` holds every expected file with the right size and content.
pub(crate) fn verify(dir: &Path, expected: &[Expected]) -> anyhow::Result<()> {
    for file in expected {
        let path = dir.join(&file.name);
        let size = std::fs::metadata(&path)
            .with_context(|| format!("output {} is missing", path.display()))?
            .len();
        if size != file.size {
            bail!("output {} has {size} bytes, expected {}", path.display(), file.size);
        }
        let (_, hash) = hash_file(&path)?;
        if hash != file.hash {
            bail!("output {} differs from the served file (blake3)", path.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_files_are_reproducible_distinct_and_verified() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let a = write_random(dir.path(), "sub/a.bin", 3 * CHUNK as u64 + 7, 1)?;
        let again = write_random(dir.path(), "sub/again.bin", a.size, 1)?;
        let b = write_random(dir.path(), "sub/b.bin", a.size, 2)?;
        assert_eq!(a.hash, again.hash);
        assert_ne!(a.hash, b.hash);
        assert_eq!(hash_file(&dir.path().join("sub/a.bin"))?, (a.size, a.hash));
        verify(dir.path(), &[a.clone(), b])?;

        std::fs::write(dir.path().join("sub/a.bin"), b"short")?;
        assert!(verify(dir.path(), std::slice::from_ref(&a)).is_err());
        let mut bytes = std::fs::read(dir.path().join("sub/again.bin"))?;
        bytes[5] ^= 1;
        std::fs::write(dir.path().join("sub/a.bin"), bytes)?;
        assert!(verify(dir.path(), &[a]).is_err());
        Ok(())
    }
}

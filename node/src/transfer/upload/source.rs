//! The file an upload sends, read a fragment at a time into buffers that are used
//! again: a fragment's buffer goes back to the source once the HTTP client has sent
//! (and dropped) its bytes. A fresh 8 MiB buffer per fragment cost the client a page
//! fault and a zeroed page for every 4 KiB it read: a tenth of its CPU in a loopback
//! upload.

use std::fs::File;
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Bytes;

use super::ack::{local_error, protocol_error};
use crate::transfer::failure::Stop;
use crate::transfer::fetch::blocking;

/// Buffers kept for reuse: the fragments one run has in flight at most, plus the one
/// read ahead (see `MAX_AHEAD`).
const SPARE_BUFFERS: usize = super::MAX_AHEAD + 2;

/// Buffers whose bytes were sent, waiting to be read into again.
type Spare = Arc<Mutex<Vec<Vec<u8>>>>;

/// The opened file an upload sends, and its spare buffers.
pub(super) struct Source {
    file: Arc<File>,
    spare: Spare,
}

impl Source {
    pub(super) fn new(file: File) -> Self {
        Self { file: Arc::new(file), spare: Spare::default() }
    }

    /// The opened file (for its size and modification time).
    pub(super) fn file(&self) -> &File {
        &self.file
    }

    /// Reads `len` bytes at `offset`, into a spare buffer if one is left.
    pub(super) async fn read_at(&self, offset: u64, len: u64) -> Result<Bytes, Stop> {
        let (file, spare) = (self.file.clone(), self.spare.clone());
        let len =
            usize::try_from(len).map_err(|_| protocol_error("a fragment too large".into()))?;
        blocking(move || {
            let mut buffer = take_spare(&spare);
            buffer.clear();
            buffer.reserve_exact(len);
            while buffer.len() < len {
                let at = offset + buffer.len() as u64;
                let spare = rustix::buffer::spare_capacity(&mut buffer);
                if rustix::io::pread(&*file, spare, at)? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            Ok(Bytes::from_owner(Returned { buffer, len, spare }))
        })
        .await
        .map_err(|e| local_error(&e, "cannot read the file to upload"))
    }
}

fn take_spare(spare: &Spare) -> Vec<u8> {
    spare.lock().unwrap_or_else(PoisonError::into_inner).pop().unwrap_or_default()
}

/// A buffer lent to the bytes of one fragment: back to its source's spares when they
/// are dropped (unless enough wait there already).
struct Returned {
    buffer: Vec<u8>,
    /// The fragment's length (the buffer may have room for more).
    len: usize,
    spare: Spare,
}

impl AsRef<[u8]> for Returned {
    fn as_ref(&self) -> &[u8] {
        &self.buffer[..self.len]
    }
}

impl Drop for Returned {
    fn drop(&mut self) {
        let mut spare = self.spare.lock().unwrap_or_else(PoisonError::into_inner);
        if spare.len() < SPARE_BUFFERS {
            spare.push(std::mem::take(&mut self.buffer));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_buffer_is_used_again_once_its_bytes_are_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let content: Vec<u8> = (0..100u8).collect();
        std::fs::write(&path, &content).expect("write");
        let source = Source::new(File::open(&path).expect("open"));
        let first = source.read_at(0, 60).await.expect("read");
        assert_eq!(&first[..], &content[..60]);
        let address = first.as_ptr();
        drop(first);
        let second = source.read_at(60, 40).await.expect("read");
        assert_eq!(&second[..], &content[60..], "a reused buffer holds only the new bytes");
        assert_eq!(second.as_ptr(), address, "the dropped fragment's buffer was taken again");
        let third = source.read_at(0, 10).await.expect("read");
        assert_ne!(third.as_ptr(), second.as_ptr(), "a buffer still lent is not taken");
        assert!(source.read_at(95, 10).await.is_err(), "reading past the end fails");
    }
}

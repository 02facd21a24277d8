//! File fingerprints: a stable hash and the length of a file's first bytes.
//!
//! (dev, inode) says which file we hold; the fingerprint says whether its content is still
//! the content we read. It catches a copytruncate even when the new content has already
//! grown past our offset, an inode number reused by a new file, and it finds the rotated
//! copy of a file among its siblings. The hash is FNV-1a 64, written out here because
//! checkpoints persist it: std's `DefaultHasher` may change between Rust releases.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use serde::{Deserialize, Serialize};

/// How many leading bytes a fingerprint covers at most.
pub const FINGERPRINT_MAX: u64 = 1024;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Hash and length of the first `len` (≤ [`FINGERPRINT_MAX`]) bytes of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub len: u64,
    pub hash: u64,
}

impl Fingerprint {
    /// The fingerprint of an empty prefix: matches every file.
    pub const EMPTY: Fingerprint = Fingerprint {
        len: 0,
        hash: FNV_OFFSET,
    };

    /// Fingerprint of a byte prefix (at most [`FINGERPRINT_MAX`] bytes are used).
    pub fn of(bytes: &[u8]) -> Fingerprint {
        let n = bytes.len().min(FINGERPRINT_MAX as usize);
        Fingerprint {
            len: n as u64,
            hash: fnv(FNV_OFFSET, &bytes[..n]),
        }
    }
}

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// Reads up to `len` bytes from offset 0 without moving the file position.
fn read_prefix(file: &File, len: u64, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.clear();
    buf.resize(len as usize, 0);
    let mut got = 0usize;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(())
}

/// Fingerprint of the file's current first bytes (up to [`FINGERPRINT_MAX`]).
pub(crate) fn compute(file: &File) -> io::Result<Fingerprint> {
    let mut buf = Vec::new();
    read_prefix(file, FINGERPRINT_MAX, &mut buf)?;
    Ok(Fingerprint::of(&buf))
}

/// Whether the file still begins with the bytes `fp` was taken of. When it does and the
/// file has grown while `fp` is shorter than the maximum, returns the longer fingerprint
/// (so a small file's fingerprint keeps up with what we have read of it).
pub(crate) fn check(file: &File, fp: Fingerprint) -> io::Result<Option<Fingerprint>> {
    let want = if fp.len < FINGERPRINT_MAX {
        FINGERPRINT_MAX
    } else {
        fp.len
    };
    let mut buf = Vec::new();
    read_prefix(file, want, &mut buf)?;
    if (buf.len() as u64) < fp.len {
        return Ok(None);
    }
    let prefix = fnv(FNV_OFFSET, &buf[..fp.len as usize]);
    if prefix != fp.hash {
        return Ok(None);
    }
    if buf.len() as u64 == fp.len {
        return Ok(Some(fp));
    }
    Ok(Some(Fingerprint {
        len: buf.len() as u64,
        hash: fnv(prefix, &buf[fp.len as usize..]),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_is_pinned() {
        // Persisted in checkpoints: must never change. FNV-1a 64 of "a".
        assert_eq!(Fingerprint::of(b"a").hash, 0xaf63_dc4c_8601_ec8c);
        assert_eq!(Fingerprint::of(b"").hash, FNV_OFFSET);
    }

    #[test]
    fn prefix_is_capped() {
        let long = vec![b'x'; 5000];
        assert_eq!(Fingerprint::of(&long), Fingerprint::of(&long[..1024]));
        assert_eq!(Fingerprint::of(&long).len, FINGERPRINT_MAX);
    }
}

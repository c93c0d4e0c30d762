//! Checks, while an upload streams through, that the body is an HDF5 file (`rest-api.md` F1).
//!
//! The original opens the upload with h5py. We accept what has an HDF5 signature at offset 0 or
//! at a power of two ≥ 512 within the first MiB, followed by a superblock that parses (version
//! 0–3, sane field sizes, the v2/v3 checksum) and whose end-of-file address fits in the bytes
//! received, which also catches truncated files. Only the first MiB is kept in memory.

use super::ByteStream;
use bytes::Bytes;
use futures_util::Stream;
use std::pin::Pin;
use std::task::{Context, Poll};

const SIGNATURE: &[u8; 8] = b"\x89HDF\r\n\x1a\n";
const HEAD_LIMIT: usize = 1024 * 1024 + 256;
pub const NOT_HDF5: &str = "The provided file is not a valid hdf5 file.";

/// Wraps a body so that it ends with an `InvalidData` error when it is not HDF5.
pub fn validating(inner: ByteStream) -> ByteStream {
    Box::pin(Hdf5Validating {
        inner,
        head: Vec::new(),
        total: 0,
        finished: false,
    })
}

struct Hdf5Validating {
    inner: ByteStream,
    head: Vec<u8>,
    total: u64,
    finished: bool,
}

impl Stream for Hdf5Validating {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        match self.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                let room = HEAD_LIMIT.saturating_sub(self.head.len());
                let take = room.min(chunk.len());
                self.head.extend_from_slice(&chunk[..take]);
                self.total += chunk.len() as u64;
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(None) => {
                self.finished = true;
                if is_hdf5(&self.head, self.total) {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        NOT_HDF5,
                    ))))
                }
            }
            other => other,
        }
    }
}

/// Whether `head` (the first bytes of a file of `total` bytes) starts an HDF5 file.
pub fn is_hdf5(head: &[u8], total: u64) -> bool {
    let mut offset = 0usize;
    while offset + 8 <= head.len() {
        if &head[offset..offset + 8] == SIGNATURE && superblock_ok(head, offset, total) {
            return true;
        }
        offset = if offset == 0 { 512 } else { offset * 2 };
    }
    false
}

fn read_addr(bytes: &[u8], at: usize, size: usize) -> Option<u64> {
    let slice = bytes.get(at..at + size)?;
    let mut v: u64 = 0;
    for (i, b) in slice.iter().enumerate().take(8) {
        v |= (*b as u64) << (8 * i);
    }
    Some(v)
}

fn sizes_ok(offsets: u8, lengths: u8) -> bool {
    matches!(offsets, 2 | 4 | 8) && matches!(lengths, 2 | 4 | 8)
}

/// The end-of-file address must lie within the bytes received. h5py writes it as an absolute
/// size even with a user block (base address 512), so it is compared as such.
fn eof_fits(base: u64, eof: u64, off: usize, total: u64) -> bool {
    base <= total && eof <= total && eof > off as u64
}

fn superblock_ok(b: &[u8], off: usize, total: u64) -> bool {
    let Some(&version) = b.get(off + 8) else {
        return false;
    };
    match version {
        0 | 1 => {
            let Some(fixed) = b.get(off + 9..off + 16) else {
                return false;
            };
            if fixed[0] != 0 || fixed[1] != 0 || fixed[3] != 0 {
                return false;
            }
            let (o, l) = (fixed[4], fixed[5]);
            if !sizes_ok(o, l) {
                return false;
            }
            let addr_start = off + if version == 0 { 24 } else { 28 };
            let o = o as usize;
            let (Some(base), Some(eof)) = (
                read_addr(b, addr_start, o),
                read_addr(b, addr_start + 2 * o, o),
            ) else {
                return false;
            };
            eof_fits(base, eof, off, total)
        }
        2 | 3 => {
            let (Some(&o), Some(&l)) = (b.get(off + 9), b.get(off + 10)) else {
                return false;
            };
            if !sizes_ok(o, l) {
                return false;
            }
            let o = o as usize;
            let body_len = 12 + 4 * o;
            let (Some(body), Some(stored)) = (
                b.get(off..off + body_len),
                b.get(off + body_len..off + body_len + 4),
            ) else {
                return false;
            };
            let stored = u32::from_le_bytes([stored[0], stored[1], stored[2], stored[3]]);
            if lookup3(body) != stored {
                return false;
            }
            let (Some(base), Some(eof)) =
                (read_addr(b, off + 12, o), read_addr(b, off + 12 + 2 * o, o))
            else {
                return false;
            };
            eof_fits(base, eof, off, total)
        }
        _ => false,
    }
}

/// Bob Jenkins' lookup3 `hashlittle` with seed 0, the checksum HDF5 puts on v2/v3 superblocks.
fn lookup3(data: &[u8]) -> u32 {
    fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
        *a = a.wrapping_sub(*c);
        *a ^= c.rotate_left(4);
        *c = c.wrapping_add(*b);
        *b = b.wrapping_sub(*a);
        *b ^= a.rotate_left(6);
        *a = a.wrapping_add(*c);
        *c = c.wrapping_sub(*b);
        *c ^= b.rotate_left(8);
        *b = b.wrapping_add(*a);
        *a = a.wrapping_sub(*c);
        *a ^= c.rotate_left(16);
        *c = c.wrapping_add(*b);
        *b = b.wrapping_sub(*a);
        *b ^= a.rotate_left(19);
        *a = a.wrapping_add(*c);
        *c = c.wrapping_sub(*b);
        *c ^= b.rotate_left(4);
        *b = b.wrapping_add(*a);
    }
    fn finish(a: &mut u32, b: &mut u32, c: &mut u32) {
        *c ^= *b;
        *c = c.wrapping_sub(b.rotate_left(14));
        *a ^= *c;
        *a = a.wrapping_sub(c.rotate_left(11));
        *b ^= *a;
        *b = b.wrapping_sub(a.rotate_left(25));
        *c ^= *b;
        *c = c.wrapping_sub(b.rotate_left(16));
        *a ^= *c;
        *a = a.wrapping_sub(c.rotate_left(4));
        *b ^= *a;
        *b = b.wrapping_sub(a.rotate_left(14));
        *c ^= *b;
        *c = c.wrapping_sub(b.rotate_left(24));
    }
    let word = |s: &[u8]| -> u32 {
        s.iter()
            .enumerate()
            .fold(0u32, |acc, (i, &x)| acc.wrapping_add((x as u32) << (8 * i)))
    };
    let init = 0xdead_beefu32.wrapping_add(data.len() as u32);
    let (mut a, mut b, mut c) = (init, init, init);
    let mut rest = data;
    while rest.len() > 12 {
        a = a.wrapping_add(word(&rest[0..4]));
        b = b.wrapping_add(word(&rest[4..8]));
        c = c.wrapping_add(word(&rest[8..12]));
        mix(&mut a, &mut b, &mut c);
        rest = &rest[12..];
    }
    if rest.is_empty() {
        return c;
    }
    a = a.wrapping_add(word(&rest[..rest.len().min(4)]));
    if rest.len() > 4 {
        b = b.wrapping_add(word(&rest[4..rest.len().min(8)]));
    }
    if rest.len() > 8 {
        c = c.wrapping_add(word(&rest[8..]));
    }
    finish(&mut a, &mut b, &mut c);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal version-0 superblock claiming `eof` bytes.
    fn v0(eof: u64) -> Vec<u8> {
        let mut b = SIGNATURE.to_vec();
        b.extend_from_slice(&[0, 0, 0, 0, 0, 8, 8, 0, 4, 0, 16, 0, 0, 0, 0, 0]);
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        b.extend_from_slice(&eof.to_le_bytes());
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        b
    }

    #[test]
    fn accepts_complete_v0_and_rejects_truncated() {
        let head = v0(800);
        assert!(is_hdf5(&head, 800));
        assert!(!is_hdf5(&head, 799));
    }

    #[test]
    fn rejects_text_and_empty() {
        assert!(!is_hdf5(b"this is not an hdf5 file\n", 25));
        assert!(!is_hdf5(b"", 0));
    }

    #[test]
    fn finds_signature_after_a_userblock() {
        let mut head = vec![0u8; 512];
        let mut sb = v0(2048);
        // Base address is the superblock's own offset when there is a user block.
        sb[24..32].copy_from_slice(&512u64.to_le_bytes());
        head.extend_from_slice(&sb);
        assert!(is_hdf5(&head, 2560));
    }

    #[test]
    fn lookup3_known_values() {
        // Reference values of hashlittle("", 0) and hashlittle("Four score and seven years ago", 0).
        assert_eq!(lookup3(b""), 0xdeadbeef);
        assert_eq!(lookup3(b"Four score and seven years ago"), 0x17770551);
    }
}

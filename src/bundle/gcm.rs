//! AES-256-GCM with a 96-bit nonce and no associated data, computed incrementally so an object of
//! any size passes through in fixed-size chunks. The output is the same as a one-shot
//! `AES-256-GCM(key, nonce, plaintext)`: ciphertext followed by the 16-byte tag.

use aes::cipher::{BlockEncrypt, KeyInit, KeyIvInit, StreamCipher};
use aes::Aes256;
use ghash::universal_hash::UniversalHash;
use ghash::GHash;

pub const NONCE_BYTES: usize = 12;
pub const TAG_BYTES: usize = 16;

type Ctr = ctr::Ctr32BE<Aes256>;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Encrypt,
    Decrypt,
}

pub struct Gcm {
    ctr: Ctr,
    ghash: GHash,
    /// Ciphertext bytes not yet hashed (GHASH works on whole 16-byte blocks).
    pending: Vec<u8>,
    len: u64,
    mask: [u8; 16],
    direction: Direction,
}

impl Gcm {
    pub fn new(key: &[u8; 32], nonce: &[u8; NONCE_BYTES], direction: Direction) -> Self {
        let cipher = Aes256::new(key.into());
        let mut h = [0u8; 16];
        cipher.encrypt_block((&mut h).into());
        let mut j0 = [0u8; 16];
        j0[..NONCE_BYTES].copy_from_slice(nonce);
        j0[15] = 1;
        let mut mask = j0;
        cipher.encrypt_block((&mut mask).into());
        let mut first = j0;
        first[15] = 2;
        Gcm {
            ctr: Ctr::new(key.into(), (&first).into()),
            ghash: GHash::new((&h).into()),
            pending: Vec::with_capacity(16),
            len: 0,
            mask,
            direction,
        }
    }

    /// Encrypts or decrypts `data` in place.
    pub fn update(&mut self, data: &mut [u8]) {
        if self.direction == Direction::Encrypt {
            self.ctr.apply_keystream(data);
        }
        self.hash(data);
        if self.direction == Direction::Decrypt {
            self.ctr.apply_keystream(data);
        }
        self.len += data.len() as u64;
    }

    fn hash(&mut self, mut ciphertext: &[u8]) {
        if !self.pending.is_empty() {
            let take = (16 - self.pending.len()).min(ciphertext.len());
            self.pending.extend_from_slice(&ciphertext[..take]);
            ciphertext = &ciphertext[take..];
            if self.pending.len() < 16 {
                return;
            }
            self.ghash.update_padded(&self.pending);
            self.pending.clear();
        }
        let whole = ciphertext.len() / 16 * 16;
        self.ghash.update_padded(&ciphertext[..whole]);
        self.pending.extend_from_slice(&ciphertext[whole..]);
    }

    /// The authentication tag over everything passed to [`Gcm::update`].
    pub fn tag(mut self) -> [u8; TAG_BYTES] {
        self.ghash.update_padded(&self.pending);
        let mut lengths = [0u8; 16];
        lengths[8..].copy_from_slice(&(self.len * 8).to_be_bytes());
        self.ghash.update(&[lengths.into()]);
        let mut tag: [u8; 16] = self.ghash.finalize().into();
        for (t, m) in tag.iter_mut().zip(self.mask) {
            *t ^= m;
        }
        tag
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm::aead::Aead;

    fn chunked(
        key: &[u8; 32],
        nonce: &[u8; 12],
        data: &[u8],
        chunk: usize,
        d: Direction,
    ) -> (Vec<u8>, [u8; 16]) {
        let mut gcm = Gcm::new(key, nonce, d);
        let mut out = data.to_vec();
        for part in out.chunks_mut(chunk.max(1)) {
            gcm.update(part);
        }
        (out, gcm.tag())
    }

    #[test]
    fn equals_one_shot_aes_gcm_for_any_chunking() {
        let key: [u8; 32] = rand::random();
        let nonce: [u8; 12] = rand::random();
        let reference = aes_gcm::Aes256Gcm::new((&key).into());
        for len in [0usize, 1, 15, 16, 17, 31, 32, 33, 1000, 65_537] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let expected = reference.encrypt((&nonce).into(), data.as_slice()).unwrap();
            for chunk in [1usize, 5, 16, 100, 4096, len] {
                let (ct, tag) = chunked(&key, &nonce, &data, chunk, Direction::Encrypt);
                assert_eq!(
                    [ct.as_slice(), &tag].concat(),
                    expected,
                    "len {len} chunk {chunk}"
                );
                let (pt, tag2) = chunked(&key, &nonce, &ct, chunk, Direction::Decrypt);
                assert_eq!(pt, data);
                assert_eq!(tag2, tag);
            }
        }
    }

    #[test]
    fn tampering_changes_the_tag() {
        let key = [7u8; 32];
        let nonce = [9u8; 12];
        let (mut ct, tag) = chunked(&key, &nonce, b"some plaintext", 4, Direction::Encrypt);
        ct[3] ^= 1;
        let (_, tag2) = chunked(&key, &nonce, &ct, 4, Direction::Decrypt);
        assert!(!constant_time_eq(&tag, &tag2));
        let (_, other_key) = chunked(&[8u8; 32], &nonce, &ct, 4, Direction::Decrypt);
        assert!(!constant_time_eq(&tag, &other_key));
    }
}

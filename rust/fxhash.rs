//! The one fast non-cryptographic hasher of the crate (rustc's Fx hash), used
//! by the encoder's tables and caches and by the trainer's counts.
//!
//! Keys are our own token tables, pieces and packed id pairs; hash flooding is
//! not a concern for a tokenizer, and SipHash's resistance to it only costs time.
//! Two details matter for speed: a byte string's tail goes in as one zero-padded
//! word (slices hash their length first, so padding cannot make two keys equal),
//! and `finish` folds the high bits into the low ones, which pick the bucket: a
//! packed (left << 32 | right) pair otherwise lands in few buckets.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

#[derive(Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

const FX_K: u64 = 0x517c_c1b7_2722_0a95;

impl FxHasher {
    #[inline(always)]
    fn add(&mut self, w: u64) {
        self.hash = (self.hash.rotate_left(5) ^ w).wrapping_mul(FX_K);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().unwrap()));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(buf));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64)
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64)
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i)
    }
    #[inline]
    fn write_u128(&mut self, i: u128) {
        self.add(i as u64);
        self.add((i >> 64) as u64);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64)
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.hash ^ (self.hash >> 31)
    }
}

pub type FxBuild = BuildHasherDefault<FxHasher>;
pub type FxMap<K, V> = HashMap<K, V, FxBuild>;
pub type FxSet<K> = HashSet<K, FxBuild>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, Hash};

    fn h<T: Hash + ?Sized>(x: &T) -> u64 {
        let mut s = FxBuild::default().build_hasher();
        x.hash(&mut s);
        s.finish()
    }

    #[test]
    fn padded_tails_do_not_collide() {
        // the length prefix of a slice keeps "ab" and "ab\0" apart
        assert_ne!(h(&b"ab"[..]), h(&b"ab\0"[..]));
        assert_ne!(h(&b"abcdefgh"[..]), h(&b"abcdefgh\0"[..]));
        assert_eq!(h(&b"hello world"[..]), h(&b"hello world".to_vec()[..]));
    }

    #[test]
    fn packed_pairs_spread_over_low_bits() {
        // pairs differing only in the high (left) half must still differ in the bucket bits
        let buckets: FxSet<u64> = (0..1024u64).map(|l| h(&(l << 32 | 7)) & 1023).collect();
        // without the fold in `finish` they would all share one bucket
        assert!(buckets.len() >= 512, "{} distinct buckets of 1024", buckets.len());
    }
}

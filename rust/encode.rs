//! Byte-level BPE encoding and decoding.
//!
//! The vocabulary is a set of byte strings with ids, plus an ordered list of
//! merges `(left id, right id) -> merged id`. Encoding a piece (one pre-token)
//! starts from its bytes (one base token per byte) and repeatedly applies the
//! merge of lowest priority present in the sequence, leftmost first — exactly the
//! `bpe()` loop of GPT-2's `encoder.py`, which merges every occurrence of the best
//! pair left to right before looking again: since a merge's result can only take
//! part in *later* merges, processing equal-priority pairs left to right one at a
//! time is the same thing.
//!
//! Three paths, cheapest first:
//! 1. the piece is itself a token (most English words with their leading space):
//!    one hash lookup;
//! 2. a bounded per-thread cache of recently merged pieces;
//! 3. the merge loop: an array scan for short pieces, a binary heap over a
//!    linked list for longer ones, and from 2 KB on (`LongMerge`) the linked
//!    list with one bucket of positions per pending merge instead of the heap,
//!    which stays linear in practice, so that megabytes without a single space
//!    (one letter, digits, one CJK character, whitespace) encode at a steady rate.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use rayon::prelude::*;

pub use crate::fxhash::FxMap;
use crate::fxhash::FxSet;
use crate::pretokenize::{for_each_piece, Pattern};


// ---------------------------------------------------------------------------

/// Pieces longer than this leave the array scan for `merge_heap` (or, from
/// BUCKET_MIN_LEN on, `merge_long`).
const LONG_MIN_LEN: usize = 128;
/// Pieces up to this length are cached, at most CACHE_MAX_ENTRIES of them over
/// two generations (see the turnover in `encode_ordinary_into`).
const CACHE_MAX_PIECE: usize = 64;
/// 2^17: a generation turns over at 2^16 distinct pieces that are not tokens, which
/// the shared corpora (8.7 MB of English prose, code and other scripts) reach with
/// o200k_base's pattern; at 2^15 the cache turned over mid-corpus and re-merged its
/// hot pieces. Costs up to ~12 MB per encoding thread (both generations full).
const CACHE_MAX_ENTRIES: usize = 1 << 17;

static NEXT_UID: AtomicU64 = AtomicU64::new(1);

/// Errors the encoder reports (become Python ValueError).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    UnknownId { id: i64, position: usize },
}

impl std::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EncodeError::UnknownId { id, position } => {
                write!(f, "token id {id} at position {position} is not in the vocabulary")
            }
        }
    }
}

/// A byte-level BPE tokenizer: the immutable tables; safe to share across threads.
pub struct Bpe {
    pub pattern: Pattern,
    uid: u64,
    byte_ids: [u32; 256],
    /// (left << 32 | right) -> (priority, merged id)
    merges: FxMap<u64, (u32, u32)>,
    /// Tokens whose own bytes encode to themselves (the whole-piece fast path).
    whole: FxMap<Box<[u8]>, u32>,
    /// The same for tokens of at most SHORT_MAX bytes, keyed by the bytes packed
    /// into two words: a lookup without a pointer chase to a boxed key and memcmp,
    /// which was the encoder's largest cost on real text.
    whole_short: FxMap<Short, u32>,
    /// Decoding table: bytes of id i are dec_bytes[dec_off[i]..dec_off[i+1]];
    /// `dec_known[i]` is false for ids that name no token (gaps).
    dec_bytes: Vec<u8>,
    dec_off: Vec<usize>,
    dec_known: Vec<bool>,
    /// Byte length of each id when under 256, else 0 (see `token_len`): a
    /// table small enough to stay in cache beside the merges.
    short_len: Vec<u8>,
    is_special: Vec<bool>,
    /// Special tokens, in id order (names sharing an id in the order given).
    specials: Vec<(String, u32)>,
    /// Merges in priority order, as (left, right) ids (for saving).
    merge_list: Vec<(u32, u32)>,
    /// Regular tokens: (bytes, id), in id order.
    tokens: Vec<(Vec<u8>, u32)>,
    /// Indices into `tokens` in byte order (for `encode_with_unstable`'s prefix
    /// searches), built on first use.
    by_bytes_sorted: OnceLock<Vec<u32>>,
}

/// How far ids may run past the number of tokens (gaps between ranks and
/// special ids, as in o200k_base) before a vocabulary is refused.
pub const MAX_ID_GAP: usize = 1 << 20;

impl Bpe {
    /// Build from regular tokens, merges in priority order (left id, right id)
    /// and special tokens. Every single byte must be a token; each merge's
    /// concatenation must be a token.
    pub fn new(
        mut tokens: Vec<(Vec<u8>, u32)>,
        merges: Vec<(u32, u32)>,
        mut specials: Vec<(String, u32)>,
        pattern: Pattern,
    ) -> Result<Bpe, String> {
        tokens.sort_by_key(|t| t.1);
        specials.sort_by_key(|t| t.1);
        let mut by_bytes: FxMap<&[u8], u32> = FxMap::default();
        let mut by_id: FxMap<u32, &[u8]> = FxMap::default();
        for (b, id) in &tokens {
            if b.is_empty() {
                return Err(format!("token id {id} has empty bytes"));
            }
            if let Some(prev) = by_bytes.insert(b.as_slice(), *id) {
                return Err(format!("duplicate token {:?}: ids {prev} and {id}", show_bytes(b)));
            }
            if by_id.insert(*id, b.as_slice()).is_some() {
                return Err(format!("duplicate token id {id}"));
            }
        }
        for (s, id) in &specials {
            if s.is_empty() {
                return Err(format!("special token id {id} is empty"));
            }
            if by_id.contains_key(id) {
                return Err(format!("special token {s:?} reuses id {id} of a regular token"));
            }
        }
        // Several names may share one special id, as tiktoken allows
        // (o200k_harmony's <|endofprompt|> and <|reserved_200018|>); each
        // encodes to the id, and the id decodes to the first name given.
        {
            let mut names: Vec<&str> = specials.iter().map(|s| s.0.as_str()).collect();
            names.sort_unstable();
            for w in names.windows(2) {
                if w[0] == w[1] {
                    return Err(format!("duplicate special token {:?}", w[0]));
                }
            }
        }
        let mut byte_ids = [u32::MAX; 256];
        for b in 0..256usize {
            match by_bytes.get(&[b as u8][..]) {
                Some(&id) => byte_ids[b] = id,
                None => return Err(format!("the vocabulary lacks the single-byte token 0x{b:02x}")),
            }
        }
        let mut merge_map: FxMap<u64, (u32, u32)> = FxMap::default();
        merge_map.reserve(merges.len());
        for (prio, &(a, b)) in merges.iter().enumerate() {
            let (ba, bb) = match (by_id.get(&a), by_id.get(&b)) {
                (Some(x), Some(y)) => (*x, *y),
                _ => return Err(format!("merge #{prio} names an unknown token id ({a}, {b})")),
            };
            let mut cat = ba.to_vec();
            cat.extend_from_slice(bb);
            let m = match by_bytes.get(cat.as_slice()) {
                Some(&m) => m,
                None => {
                    return Err(format!(
                        "merge #{prio} ({:?} + {:?}) makes {:?}, which is not a token",
                        show_bytes(ba),
                        show_bytes(bb),
                        show_bytes(&cat)
                    ))
                }
            };
            let key = pair_key(a, b);
            if merge_map.contains_key(&key) {
                return Err(format!("merge #{prio} ({:?} + {:?}) is listed twice", show_bytes(ba), show_bytes(bb)));
            }
            merge_map.insert(key, (prio as u32, m));
        }
        let max_id = tokens
            .iter()
            .map(|t| t.1)
            .chain(specials.iter().map(|s| s.1))
            .max()
            .unwrap_or(0) as usize;
        // The decode tables are dense, sized by the largest id: an id from a
        // file must not choose the allocation (a rank of 4e9 would ask for
        // 4 GB and abort). Real vocabularies leave at most small gaps.
        let n_ids = tokens.len() + specials.len();
        if max_id >= n_ids + MAX_ID_GAP {
            let what = if specials.last().map_or(false, |s| s.1 as usize == max_id) { "special token id" } else { "token id" };
            return Err(format!(
                "{what} {max_id} is out of range for a vocabulary of {n_ids} tokens (ids may exceed the token count by at most {MAX_ID_GAP})"
            ));
        }
        let mut dec_known = vec![false; max_id + 1];
        let mut per_id: Vec<&[u8]> = vec![&[]; max_id + 1];
        for (b, id) in &tokens {
            per_id[*id as usize] = b;
            dec_known[*id as usize] = true;
        }
        for (s, id) in specials.iter().rev() {
            per_id[*id as usize] = s.as_bytes();
            dec_known[*id as usize] = true;
        }
        let mut is_special = vec![false; max_id + 1];
        for (_, id) in &specials {
            is_special[*id as usize] = true;
        }
        let mut dec_bytes = Vec::new();
        let mut dec_off = Vec::with_capacity(max_id + 2);
        for b in &per_id {
            dec_off.push(dec_bytes.len());
            dec_bytes.extend_from_slice(b);
        }
        dec_off.push(dec_bytes.len());
        let short_len = dec_off.windows(2).map(|w| u8::try_from(w[1] - w[0]).unwrap_or(0)).collect();
        drop(by_bytes);
        drop(by_id);
        let mut bpe = Bpe {
            pattern,
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
            byte_ids,
            merges: merge_map,
            whole: FxMap::default(),
            whole_short: FxMap::default(),
            dec_bytes,
            dec_off,
            dec_known,
            short_len,
            is_special,
            specials,
            merge_list: merges,
            tokens: Vec::new(),
            by_bytes_sorted: OnceLock::new(),
        };
        // The fast path may only return a token for its own bytes when the merge
        // loop would: check each token once (true for every GPT-2 token).
        let mut whole = FxMap::default();
        whole.reserve(tokens.len());
        // each check reads the tables only: over the cores, then kept in token order
        let merges_to_itself: Vec<bool> = tokens
            .par_iter()
            .map_init(Vec::new, |scratch, (b, id)| {
                scratch.clear();
                bpe.merge_piece(b, scratch);
                scratch.len() == 1 && scratch[0] == *id
            })
            .collect();
        for ((b, id), &itself) in tokens.iter().zip(&merges_to_itself) {
            if itself {
                match pack_short(b) {
                    Some(k) => {
                        bpe.whole_short.insert(k, *id);
                    }
                    None => {
                        whole.insert(b.clone().into_boxed_slice(), *id);
                    }
                }
            }
        }
        bpe.whole = whole;
        bpe.tokens = tokens;
        Ok(bpe)
    }

    /// Build from tiktoken-style mergeable ranks (bytes -> rank, rank == id):
    /// the merges are recovered by running BPE over each token's bytes with the
    /// lower-ranked tokens, as tiktoken's encoding would.
    pub fn from_ranks(
        ranks: Vec<(Vec<u8>, u32)>,
        specials: Vec<(String, u32)>,
        pattern: Pattern,
    ) -> Result<Bpe, String> {
        let merges = derive_merges(&ranks)?;
        Bpe::new(ranks, merges, specials, pattern)
    }

    pub fn n_vocab(&self) -> usize {
        self.dec_known.len()
    }
    pub fn specials(&self) -> &[(String, u32)] {
        &self.specials
    }
    pub fn merge_list(&self) -> &[(u32, u32)] {
        &self.merge_list
    }
    pub fn tokens(&self) -> &[(Vec<u8>, u32)] {
        &self.tokens
    }

    /// Bytes of one token id (regular or special).
    pub fn token_bytes(&self, id: i64) -> Option<&[u8]> {
        if id < 0 || id as usize >= self.dec_known.len() || !self.dec_known[id as usize] {
            return None;
        }
        let i = id as usize;
        Some(&self.dec_bytes[self.dec_off[i]..self.dec_off[i + 1]])
    }

    /// Concatenated bytes of a sequence of ids.
    pub fn decode_bytes(&self, ids: impl IntoIterator<Item = i64>) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        for (position, id) in ids.into_iter().enumerate() {
            match self.token_bytes(id) {
                Some(b) => out.extend_from_slice(b),
                None => return Err(EncodeError::UnknownId { id, position }),
            }
        }
        Ok(out)
    }

    /// BPE of one piece, appended to `out` (no fast path, no cache).
    pub fn merge_piece(&self, piece: &[u8], out: &mut Vec<u32>) {
        if piece.len() >= BUCKET_MIN_LEN {
            self.merge_long(piece, out)
        } else if piece.len() > LONG_MIN_LEN {
            self.merge_heap(piece, out)
        } else {
            self.merge_small(piece, out)
        }
    }

    /// Byte length of a regular token (an id from the merge tables).
    #[inline(always)]
    fn token_len(&self, id: u32) -> u32 {
        match self.short_len[id as usize] {
            0 => (self.dec_off[id as usize + 1] - self.dec_off[id as usize]) as u32,
            n => n as u32,
        }
    }

    #[inline]
    fn pair(&self, a: u32, b: u32) -> Option<(u32, u32)> {
        self.merges.get(&pair_key(a, b)).copied()
    }

    /// Array-scan merge for short pieces: O(n^2) comparisons of integers, with
    /// only the two neighbouring pair lookups redone after each merge. On the
    /// stack (no allocation per piece), sized for the common short piece.
    fn merge_small(&self, piece: &[u8], out: &mut Vec<u32>) {
        match piece.len() {
            0 => {}
            1 => out.push(self.byte_ids[piece[0] as usize]),
            n if n <= 24 => self.merge_scan(piece, &mut [0; 24], &mut [0; 24], out),
            n if n <= LONG_MIN_LEN => self.merge_scan(piece, &mut [0; LONG_MIN_LEN], &mut [0; LONG_MIN_LEN], out),
            // (the encoder sends these to merge_heap / merge_long; tests compare them)
            n => self.merge_scan(piece, &mut vec![0; n], &mut vec![0; n], out),
        }
    }

    /// `merge_small` in the scratch arrays `ids` and `prio` (at least as long as the piece).
    #[inline(always)]
    fn merge_scan(&self, piece: &[u8], ids: &mut [u32], prio: &mut [u64], out: &mut Vec<u32>) {
        debug_assert!(piece.len() <= ids.len() && piece.len() <= prio.len() && piece.len() >= 2);
        const NONE: u64 = u64::MAX;
        // prio[i]: (priority << 32 | merged id) of merging ids[i], ids[i+1];
        // priorities are unique, so the smallest word is the leftmost best merge
        let pack = |m: Option<(u32, u32)>| m.map_or(NONE, |(p, id)| (p as u64) << 32 | id as u64);
        let mut n = piece.len();
        for (i, &b) in piece.iter().enumerate() {
            ids[i] = self.byte_ids[b as usize];
        }
        for i in 0..n - 1 {
            prio[i] = pack(self.pair(ids[i], ids[i + 1]));
        }
        loop {
            let mut best = NONE;
            let mut at = 0;
            for (i, &p) in prio[..n - 1].iter().enumerate() {
                if p < best {
                    best = p;
                    at = i;
                }
            }
            if best == NONE {
                break;
            }
            ids[at] = best as u32;
            ids.copy_within(at + 2..n, at + 1);
            prio.copy_within(at + 1..n - 1, at);
            n -= 1;
            if at + 1 < n {
                prio[at] = pack(self.pair(ids[at], ids[at + 1]));
            }
            if at > 0 {
                prio[at - 1] = pack(self.pair(ids[at - 1], ids[at]));
            }
        }
        out.extend_from_slice(&ids[..n]);
    }

    /// Heap merge for long pieces: a doubly linked list of symbols and a min-heap
    /// of candidate pairs keyed by (priority, position); stale entries are
    /// skipped when popped. O(n log n).
    fn merge_heap(&self, piece: &[u8], out: &mut Vec<u32>) {
        const NONE: u32 = u32::MAX;
        let n = piece.len();
        let mut id: Vec<u32> = piece.iter().map(|&b| self.byte_ids[b as usize]).collect();
        let mut next: Vec<u32> = (1..=n as u32).collect();
        next[n - 1] = NONE;
        let mut prev: Vec<u32> = (0..n as u32).map(|i| i.wrapping_sub(1)).collect();
        prev[0] = NONE;
        // (priority, merged id) of the pair starting at each live node; a heap
        // entry is current iff its priority still equals prio[pos] (a priority
        // names one pair, and a node's id only ever changes into a newer token).
        let mut prio: Vec<u32> = vec![NONE; n];
        let mut merged: Vec<u32> = vec![0; n];
        let mut heap: BinaryHeap<Reverse<u64>> = BinaryHeap::with_capacity(n);
        for i in 0..n - 1 {
            if let Some((p, m)) = self.pair(id[i], id[i + 1]) {
                prio[i] = p;
                merged[i] = m;
                heap.push(Reverse((p as u64) << 32 | i as u64));
            }
        }
        while let Some(Reverse(key)) = heap.pop() {
            let (p, i) = ((key >> 32) as u32, (key & 0xFFFF_FFFF) as usize);
            if prio[i] != p {
                continue; // stale: this node's pair has changed (or the node is gone)
            }
            let j = next[i] as usize;
            id[i] = merged[i];
            prio[j] = NONE; // node j is gone
            next[i] = next[j];
            prio[i] = NONE;
            if next[j] != NONE {
                let k = next[j] as usize;
                prev[k] = i as u32;
                if let Some((p2, m2)) = self.pair(id[i], id[k]) {
                    prio[i] = p2;
                    merged[i] = m2;
                    heap.push(Reverse((p2 as u64) << 32 | i as u64));
                }
            }
            if prev[i] != NONE {
                let h = prev[i] as usize;
                match self.pair(id[h], id[i]) {
                    Some((p2, m2)) => {
                        prio[h] = p2;
                        merged[h] = m2;
                        heap.push(Reverse((p2 as u64) << 32 | h as u64));
                    }
                    None => prio[h] = NONE,
                }
            }
        }
        let mut i = 0usize;
        loop {
            out.push(id[i]);
            if next[i] == NONE {
                break;
            }
            i = next[i] as usize;
        }
    }

    /// Merge for long pieces, in the same order as a min-heap of (priority,
    /// position) would pop (see `LongMerge`), without the heap's cache misses.
    fn merge_long(&self, piece: &[u8], out: &mut Vec<u32>) {
        LONG.with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => {
                scratch.run(self, piece, out);
                if scratch.id.capacity() > LONG_KEEP {
                    scratch.shrink(); // do not keep a huge piece's scratch for good
                }
            }
            Err(_) => LongMerge::default().run(self, piece, out),
        })
    }

    /// Encode text without special-token handling.
    pub fn encode_ordinary_into(&self, text: &str, out: &mut Vec<u32>) {
        CACHE.with(|c| {
            let mut cache = c.borrow_mut();
            if cache.uid != self.uid {
                cache.uid = self.uid;
                cache.map.clear();
                cache.short.clear();
                cache.short_old.clear();
            }
            let b = text.as_bytes();
            for_each_piece(text, self.pattern, |s, e| {
                let piece = &b[s..e];
                let key = pack_short_in(b, s, e);
                let hit = match key {
                    Some(k) => self.whole_short.get(&k),
                    None => self.whole.get(piece),
                };
                if let Some(&id) = hit {
                    out.push(id);
                    return;
                }
                if piece.len() > CACHE_MAX_PIECE {
                    self.merge_piece(piece, out);
                    return;
                }
                if let Some(k) = key {
                    if let Some((n, ids)) = cache.short.get(&k) {
                        out.extend_from_slice(&ids[..*n as usize]);
                        return;
                    }
                    if let Some(&(n, ids)) = cache.short_old.get(&k) {
                        out.extend_from_slice(&ids[..n as usize]);
                        cache.short.insert(k, (n, ids)); // still in use: survives the next turnover
                        return;
                    }
                } else if let Some(ids) = cache.map.get(piece) {
                    out.extend_from_slice(ids);
                    return;
                }
                let start = out.len();
                self.merge_small(piece, out);
                if cache.map.len() + cache.short.len() >= CACHE_MAX_ENTRIES / 2 {
                    // Turnover: the current generation becomes the old one (what
                    // is still used moves back on its next hit), the previous old
                    // one goes. Clearing everything at once dropped the hot
                    // pieces too, and text re-merged them straight away.
                    cache.map.clear();
                    cache.short_old = std::mem::take(&mut cache.short);
                }
                let ids = &out[start..];
                match key {
                    Some(k) if ids.len() <= SHORT_IDS => {
                        let mut inline = [0u32; SHORT_IDS];
                        inline[..ids.len()].copy_from_slice(ids);
                        cache.short.insert(k, (ids.len() as u8, inline));
                    }
                    _ => {
                        cache.map.insert(piece.into(), ids.into());
                    }
                }
            });
        })
    }

    pub fn encode_ordinary(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 4 + 1);
        self.encode_ordinary_into(text, &mut out);
        out
    }

    /// Encode text, turning occurrences of the `allowed` special tokens into
    /// their ids (pre-tokenization restarts after each, as in tiktoken). The
    /// caller checks for disallowed ones. Unknown names in `allowed` are ignored.
    pub fn encode_with_specials(&self, text: &str, allowed: &[&str]) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 4 + 1);
        match self.encode_specials_by(text, allowed, None, &mut out) {
            Ok(_) => out,
            Err(_) => unreachable!("the built-in scanner cannot fail"),
        }
    }

    /// The text between specials encoded by `split` (None: this vocabulary's
    /// scanner, with the piece cache), each piece merged by BPE.
    fn ordinary_by(&self, text: &str, split: Option<&dyn Split>, out: &mut Vec<u32>) -> Result<(), String> {
        match split {
            None => {
                self.encode_ordinary_into(text, out);
                Ok(())
            }
            Some(sp) => sp.pieces(text, &mut |s, e| self.merge_piece(&text.as_bytes()[s..e], out)),
        }
    }

    /// The one special-token rule of every encode: the leftmost allowed special
    /// (the longest on a tie) is cut out, the text before it encoded ordinarily.
    /// Returns where the last ordinary segment starts (`text.len()` when the
    /// text ends with a special token).
    pub fn encode_specials_by(
        &self,
        text: &str,
        allowed: &[&str],
        split: Option<&dyn Split>,
        out: &mut Vec<u32>,
    ) -> Result<usize, String> {
        let allowed: Vec<(&str, u32)> = self
            .specials
            .iter()
            .filter(|(s, _)| allowed.contains(&s.as_str()))
            .map(|(s, id)| (s.as_str(), *id))
            .collect();
        if allowed.is_empty() {
            self.ordinary_by(text, split, out)?;
            return Ok(0);
        }
        // next occurrence of each allowed special at or after `pos` (None: no more)
        let mut next_at: Vec<Option<usize>> = allowed.iter().map(|(s, _)| text.find(s)).collect();
        let mut pos = 0;
        loop {
            let mut best: Option<(usize, usize, u32)> = None; // (start, len, id)
            for (k, (s, id)) in allowed.iter().enumerate() {
                if let Some(at) = next_at[k] {
                    if at < pos {
                        next_at[k] = text[pos..].find(s).map(|x| x + pos);
                    }
                }
                if let Some(at) = next_at[k] {
                    let better = match best {
                        None => true,
                        Some((bs, bl, _)) => at < bs || (at == bs && s.len() > bl),
                    };
                    if better {
                        best = Some((at, s.len(), *id));
                    }
                }
            }
            match best {
                None => {
                    self.ordinary_by(&text[pos..], split, out)?;
                    return Ok(pos);
                }
                Some((start, len, id)) => {
                    self.ordinary_by(&text[pos..start], split, out)?;
                    out.push(id);
                    pos = start + len;
                }
            }
        }
    }

    /// Regular tokens' bytes (None for special and unknown ids).
    fn regular_bytes(&self, id: u32) -> Option<&[u8]> {
        if self.is_special.get(id as usize).copied().unwrap_or(true) {
            return None;
        }
        self.token_bytes(id as i64)
    }

    /// tiktoken's `encode_with_unstable`, rule for rule (its `CoreBPE::
    /// _encode_unstable_native`): the tokens of `text` that no appended text
    /// can change, and every token sequence the rest may start as once more
    /// text follows. The last piece is unstable, extended backwards over
    /// whitespace-only tokens (cl100k's `\s*[\r\n]+` can swallow them); the
    /// completions are every token that starts with the unstable bytes, every
    /// re-encoding of those bytes split at an inner point with a token that
    /// continues the second half, and a whitespace-ending tail split before
    /// its last character. Completions come back sorted (tiktoken's are in
    /// hash order; the set is the same).
    pub fn encode_with_unstable(
        &self,
        text: &str,
        allowed: &[&str],
        split: Option<&dyn Split>,
    ) -> Result<(Vec<u32>, Vec<Vec<u32>>), String> {
        let mut tokens = Vec::new();
        let tail = self.encode_specials_by(text, allowed, split, &mut tokens)?;
        let seg = &text[tail..];
        let mut last: Option<(usize, usize)> = None;
        match split {
            None => for_each_piece(seg, self.pattern, |s, e| last = Some((s, e))),
            Some(sp) => sp.pieces(seg, &mut |s, e| last = Some((s, e)))?,
        }
        let mut last_len = match last {
            None => 0,
            Some((s, e)) => {
                let mut v = Vec::new();
                self.merge_piece(&seg.as_bytes()[s..e], &mut v);
                v.len()
            }
        };
        if last_len == 0 {
            return Ok((tokens, Vec::new()));
        }
        let all_space = |id: u32| {
            self.regular_bytes(id).map_or(false, |b| b.iter().all(|c| matches!(c, b' ' | b'\n' | b'\t')))
        };
        let n = tokens.len();
        if all_space(tokens[n - last_len]) {
            while last_len < n && all_space(tokens[n - last_len - 1]) {
                last_len += 1;
            }
        }
        let mut unstable = Vec::new();
        for &id in &tokens[n - last_len..] {
            unstable.extend_from_slice(self.regular_bytes(id).unwrap_or(&[]));
        }
        tokens.truncate(n - last_len);
        let mut completions: FxSet<Vec<u32>> = FxSet::default();
        if unstable.is_empty() {
            return Ok((tokens, Vec::new()));
        }
        let sorted = self.by_bytes_sorted.get_or_init(|| {
            let mut ix: Vec<u32> = (0..self.tokens.len() as u32).collect();
            ix.sort_unstable_by(|&a, &b| self.tokens[a as usize].0.cmp(&self.tokens[b as usize].0));
            ix
        });
        let tok = |k: usize| &self.tokens[sorted[k] as usize];
        // tokens starting with `prefix` are contiguous in byte order
        let starting = |prefix: &[u8]| {
            let from = sorted.partition_point(|&i| self.tokens[i as usize].0.as_slice() < prefix);
            let n = (from..sorted.len()).take_while(|&k| tok(k).0.starts_with(prefix)).count();
            from..from + n
        };
        for k in starting(&unstable) {
            completions.insert(vec![tok(k).1]);
        }
        let mut encoded = Vec::new();
        let mut possibility = Vec::new();
        for i in 1..unstable.len() {
            let (prefix, suffix) = unstable.split_at(i);
            for k in starting(suffix) {
                possibility.clear();
                possibility.extend_from_slice(prefix);
                possibility.extend_from_slice(&tok(k).0);
                encoded.clear();
                match std::str::from_utf8(&possibility) {
                    // a pattern split may appear inside the new text and stop merges
                    Ok(s) => self.ordinary_by(s, split, &mut encoded)?,
                    Err(_) => self.merge_piece(&possibility, &mut encoded),
                }
                let mut seq = Vec::new();
                let mut seq_len = 0;
                for &t in &encoded {
                    seq.push(t);
                    seq_len += self.regular_bytes(t).map_or(0, |b| b.len());
                    if seq_len >= unstable.len() {
                        break;
                    }
                }
                completions.insert(seq);
            }
        }
        // A whitespace tail may become its own piece before what follows
        // (`\s+(?!\S)`): the bytes before the last character and that
        // character, merged apart.
        if unstable.len() > 1 {
            if let Some(size) = last_char_if_whitespace(&unstable) {
                if unstable.len() > size {
                    let cut = unstable.len() - size;
                    let mut re = Vec::new();
                    self.merge_piece(&unstable[..cut], &mut re);
                    self.merge_piece(&unstable[cut..], &mut re);
                    completions.insert(re);
                }
            }
        }
        let mut completions: Vec<Vec<u32>> = completions.into_iter().collect();
        completions.sort_unstable();
        Ok((tokens, completions))
    }

    /// Encode many texts over `threads` threads; results in input order.
    ///
    /// The threads come from a persistent pool per thread count, so their piece
    /// caches stay warm from one batch to the next.
    pub fn encode_batch(&self, texts: &[&str], allowed: &[&str], threads: usize) -> Vec<Vec<u32>> {
        let threads = threads.clamp(1, 256);
        if threads == 1 || texts.len() < 2 {
            return texts.iter().map(|t| self.encode_with_specials(t, allowed)).collect();
        }
        match pool(threads) {
            Some(pool) => pool.install(|| {
                texts.par_iter().with_min_len(4).map(|t| self.encode_with_specials(t, allowed)).collect()
            }),
            // could not start threads (resource limits): still give the right answer
            None => texts.iter().map(|t| self.encode_with_specials(t, allowed)).collect(),
        }
    }
}

/// A persistent pool of `threads` threads (one per thread count), so their
/// piece caches stay warm from one call to the next.
pub(crate) fn pool(threads: usize) -> Option<std::sync::Arc<rayon::ThreadPool>> {
    use std::sync::{Arc, Mutex, OnceLock};
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<rayon::ThreadPool>>>> = OnceLock::new();
    let mut pools = POOLS.get_or_init(|| Mutex::new(HashMap::new())).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = pools.get(&threads) {
        return Some(p.clone());
    }
    let p = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("gptlite-bpe-{i}"))
            .build()
            .ok()?,
    );
    pools.insert(threads, p.clone());
    Some(p)
}

/// Pieces shorter than this (and longer than LONG_MIN_LEN) go to `merge_heap`:
/// with few repeats of a pair a bucket holds a position or two, and the
/// buckets' bookkeeping cost more than a heap that small (random letters).
const BUCKET_MIN_LEN: usize = 2048;
/// Scratch of `merge_long` for pieces over this many bytes is freed after the call.
const LONG_KEEP: usize = 1 << 20;

thread_local! {
    static LONG: RefCell<LongMerge> = RefCell::new(LongMerge::default());
}

const NIL: u32 = u32::MAX;
const DEAD: u32 = u32::MAX;

/// The long-piece merge. The exact order is that of a min-heap of candidate
/// pairs keyed by (priority, position) with stale entries skipped, the order of
/// tiktoken's and GPT-2's merge loops; a binary heap of one entry per pair,
/// though, is millions of entries on a megabyte piece, and every pop then
/// walked ~20 levels of it through memory (1 MB took 5-8x as long as 0.25 MB).
///
/// Instead the candidates of one priority share a bucket (a priority names one
/// pair, so one merge), and only the distinct priorities are in a heap, which
/// pathological text keeps tiny. A bucket is taken whole, in position order,
/// which sweeps the list front to back. That pops in the heap's order because
/// a merge of priority p creates only pairs of other priorities: those above p
/// go to their buckets, which are not open yet, while those at or below p go
/// to `urgent`, a heap that is drained before the open bucket's next position
/// whenever its key is smaller. (Those need merges out of dependency order, or
/// a token that two merges make: never in merges derived from tiktoken ranks,
/// whose parts always rank below the token, nor seen with GPT-2's list.) An entry is current iff its position still
/// holds the pair's two ids: a symbol only ever changes into a longer token,
/// so a pair, once gone from a position, never comes back there.
///
/// The symbols are a linked list over the byte positions in 8 bytes a byte
/// (12 with explicit next/prev links, which a 4 MB piece paid in memory traffic
/// and fresh pages): `id[x]` is the token starting at byte x (DEAD inside a
/// token), whose end is x + its length; `back[e]` is the start of the token
/// ending at byte e, written when a merge makes that token (a one-byte token
/// ends where it starts, so `back` needs no initialisation).
#[derive(Default)]
struct LongMerge {
    /// the token starting at each byte, DEAD inside a token
    id: Vec<u32>,
    /// the start of the token ending at each byte (valid at multi-byte tokens' ends)
    back: Vec<u32>,
    /// the piece's length
    n: u32,
    /// priority -> its open bucket (an index into `lists` and `merge`), NIL
    /// when none; a direct table (one entry per merge) because a hash lookup
    /// here was a quarter of the time. Every entry is NIL again after a run.
    slot: Vec<u32>,
    lists: Vec<Vec<u32>>,
    /// (left id, right id, merged id) of each bucket's priority
    merge: Vec<(u32, u32, u32)>,
    /// buckets free for reuse (their lists empty, capacity kept)
    free: Vec<u32>,
    /// priorities with an open bucket, smallest first
    order: BinaryHeap<Reverse<u32>>,
    /// (priority << 32 | position) of pairs at or below the priority being merged
    urgent: BinaryHeap<Reverse<u64>>,
    /// the priority being merged; pairs at or below it go to `urgent`
    cur: Option<u32>,
    /// a run is under way: still set at the start of the next one, a run
    /// panicked (caught by the bindings) and the scratch may hold its buckets
    busy: bool,
}

impl LongMerge {
    fn run(&mut self, bpe: &Bpe, piece: &[u8], out: &mut Vec<u32>) {
        let n = piece.len();
        debug_assert!(n >= 2 && n < NIL as usize);
        if self.busy {
            *self = LongMerge::default();
        }
        self.busy = true;
        self.n = n as u32;
        self.cur = None;
        if self.slot.len() < bpe.merge_list.len() {
            self.slot.resize(bpe.merge_list.len(), NIL);
        }
        self.id.clear();
        self.id.extend(piece.iter().map(|&b| bpe.byte_ids[b as usize]));
        if self.back.len() < n {
            self.back.resize(n, 0);
        }
        for i in 0..n - 1 {
            let (a, b) = (self.id[i], self.id[i + 1]);
            if let Some((p, m)) = bpe.pair(a, b) {
                self.push(p, i as u32, a, b, m);
            }
        }
        while let Some(Reverse(p)) = self.order.pop() {
            let s = std::mem::replace(&mut self.slot[p as usize], NIL) as usize;
            let mut list = std::mem::take(&mut self.lists[s]);
            let (a, b, m) = self.merge[s];
            let len_a = bpe.token_len(a);
            // Pushes arrive in nearly sorted order (a sweep pushes the left
            // neighbour's pair after its own); sort only when needed.
            if !list.windows(2).all(|w| w[0] < w[1]) {
                list.sort_unstable();
            }
            self.cur = Some(p);
            let mut c = 0;
            loop {
                if let Some(&Reverse(k)) = self.urgent.peek() {
                    if c == list.len() || k < ((p as u64) << 32 | list[c] as u64) {
                        self.urgent.pop();
                        self.merge_urgent(bpe, k);
                        continue;
                    }
                }
                let Some(&i) = list.get(c) else { break };
                c += 1;
                let j = i + len_a;
                if self.id[i as usize] == a && j < self.n && self.id[j as usize] == b {
                    self.merge_at(bpe, i, j, m);
                }
            }
            list.clear();
            self.lists[s] = list;
            self.free.push(s as u32);
        }
        let mut i = 0;
        while i < self.n {
            let t = self.id[i as usize];
            out.push(t);
            i += bpe.token_len(t);
        }
        self.busy = false;
    }

    fn shrink(&mut self) {
        *self = LongMerge { slot: std::mem::take(&mut self.slot), ..LongMerge::default() };
    }

    /// Queue the pair (a, b) of priority p (merging into m) at position `pos`.
    #[inline]
    fn push(&mut self, p: u32, pos: u32, a: u32, b: u32, m: u32) {
        if self.cur.map_or(false, |cur| p <= cur) {
            self.urgent.push(Reverse((p as u64) << 32 | pos as u64));
            return;
        }
        let s = match self.slot[p as usize] {
            NIL => {
                let s = match self.free.pop() {
                    Some(s) => s,
                    None => {
                        self.lists.push(Vec::new());
                        self.merge.push((0, 0, 0));
                        self.lists.len() as u32 - 1
                    }
                };
                self.merge[s as usize] = (a, b, m);
                self.slot[p as usize] = s;
                self.order.push(Reverse(p));
                s
            }
            s => s,
        };
        self.lists[s as usize].push(pos);
    }

    /// An urgent entry: merge it if its pair is still there.
    fn merge_urgent(&mut self, bpe: &Bpe, key: u64) {
        let (p, i) = ((key >> 32) as u32, key as u32);
        let a = self.id[i as usize];
        if a == DEAD {
            return;
        }
        let j = i + bpe.token_len(a);
        if j >= self.n {
            return;
        }
        if let Some((q, m)) = bpe.pair(a, self.id[j as usize]) {
            if q == p {
                self.merge_at(bpe, i, j, m);
            }
        }
    }

    /// Merge the tokens starting at i and j (its right neighbour) into m;
    /// queue the two new pairs.
    #[inline]
    fn merge_at(&mut self, bpe: &Bpe, i: u32, j: u32, m: u32) {
        let k = i + bpe.token_len(m);
        self.id[j as usize] = DEAD;
        self.id[i as usize] = m;
        self.back[k as usize - 1] = i;
        if k < self.n {
            let r = self.id[k as usize];
            if let Some((q, m2)) = bpe.pair(m, r) {
                self.push(q, i, m, r, m2);
            }
        }
        if i > 0 {
            // the token ending at i - 1: one byte if it starts there
            let h = if self.id[i as usize - 1] != DEAD { i - 1 } else { self.back[i as usize - 1] };
            let l = self.id[h as usize];
            if let Some((q, m2)) = bpe.pair(l, m) {
                self.push(q, h, l, m, m2);
            }
        }
    }
}

/// A short byte string packed by `pack_short`, as two words rather than a
/// u128: the tables' entries then align to 8 bytes, not 16 (24 bytes with a
/// u32 value instead of 32), so more of the vocabulary fits in the cache.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Short {
    lo: u64,
    hi: u64,
}

/// Longest token or piece packed by `pack_short`.
const SHORT_MAX: usize = 15;

/// `b` (at most SHORT_MAX bytes) as one integer: the bytes, zero-padded, and the
/// length in the top byte, so that different byte strings never collide.
#[inline(always)]
fn pack_short(b: &[u8]) -> Option<Short> {
    if b.len() > SHORT_MAX {
        return None;
    }
    let mut buf = [0u8; 16];
    buf[..b.len()].copy_from_slice(b);
    buf[15] = b.len() as u8;
    let w = u128::from_le_bytes(buf);
    Some(Short { lo: w as u64, hi: (w >> 64) as u64 })
}

/// `pack_short(&text[s..e])`, but from two unaligned word loads when 16 bytes
/// from `s` lie inside `text`: copying the piece into a zeroed buffer and
/// reading it back as words stalls on store forwarding, which made the copy
/// cost as much as the table lookup it feeds.
#[inline(always)]
fn pack_short_in(text: &[u8], s: usize, e: usize) -> Option<Short> {
    let n = e - s;
    if n > SHORT_MAX {
        return None;
    }
    if s + 16 > text.len() {
        return pack_short(&text[s..e]);
    }
    let lo = u64::from_le_bytes(text[s..s + 8].try_into().unwrap());
    let hi = u64::from_le_bytes(text[s + 8..s + 16].try_into().unwrap());
    let (lo, hi) = if n >= 8 {
        (lo, hi & ((1u64 << ((n - 8) * 8)) - 1))
    } else {
        (lo & ((1u64 << (n * 8)) - 1), 0)
    };
    Some(Short { lo, hi: hi | (n as u64) << 56 })
}

/// Most ids a short piece's cache entry holds inline.
const SHORT_IDS: usize = 7;

struct Cache {
    uid: u64,
    map: FxMap<Box<[u8]>, Box<[u32]>>,
    /// Pieces of at most SHORT_MAX bytes merging to at most SHORT_IDS ids, key
    /// and ids inline (no pointer chase on a hit).
    short: FxMap<Short, (u8, [u32; SHORT_IDS])>,
    /// The previous generation of `short` (see the turnover in `encode_ordinary_into`).
    short_old: FxMap<Short, (u8, [u32; SHORT_IDS])>,
}

thread_local! {
    static CACHE: RefCell<Cache> =
        RefCell::new(Cache { uid: 0, map: FxMap::default(), short: FxMap::default(), short_old: FxMap::default() });
}

#[inline(always)]
fn pair_key(a: u32, b: u32) -> u64 {
    ((a as u64) << 32) | b as u64
}

/// Bytes for error messages: the text when it is UTF-8, else escaped.
pub fn show_bytes(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_string(),
        Err(_) => b.escape_ascii().to_string(),
    }
}

/// The byte length of `b`'s last character when it is valid UTF-8 and
/// Unicode whitespace (what tiktoken asks of `bstr::decode_last_utf8`).
fn last_char_if_whitespace(b: &[u8]) -> Option<usize> {
    let lo = b.len().saturating_sub(4);
    let start = (lo..b.len()).rev().find(|&i| b[i] & 0xC0 != 0x80)?;
    let s = std::str::from_utf8(&b[start..]).ok()?;
    let mut chars = s.chars();
    let c = chars.next()?;
    (chars.next().is_none() && c.is_whitespace()).then_some(b.len() - start)
}

/// A pre-tokenizer other than the built-in scanners (a general regex for a
/// custom pattern): calls `f(start, end)` for each piece of `text`, in order.
pub trait Split {
    fn pieces(&self, text: &str, f: &mut dyn FnMut(usize, usize)) -> Result<(), String>;
}

/// Recover the merge list (priority = rank) from tiktoken-style ranks: for each
/// multi-byte token, in rank order, run rank-based BPE over its bytes using only
/// lower-ranked tokens; if that ends in exactly two parts, they are its merge.
/// Tokens BPE can never produce (no such split) get no merge.
pub fn derive_merges(ranks: &[(Vec<u8>, u32)]) -> Result<Vec<(u32, u32)>, String> {
    let mut by_bytes: FxMap<&[u8], u32> = FxMap::default();
    for (b, r) in ranks {
        if let Some(prev) = by_bytes.insert(b.as_slice(), *r) {
            return Err(format!("duplicate token {:?}: ranks {prev} and {r}", show_bytes(b)));
        }
    }
    let mut order: Vec<&(Vec<u8>, u32)> = ranks.iter().filter(|t| t.0.len() > 1).collect();
    order.sort_by_key(|t| t.1);
    // each token's merge depends on the lower ranks only (read, never written):
    // the tokens are independent, so they run over the cores (most of loading a
    // 200k vocabulary), collected in rank order
    let by_bytes = &by_bytes;
    let found: Vec<Option<(u32, u32)>> = order.par_iter().map(|&(tok, rank)| last_merge(by_bytes, tok, *rank)).collect();
    Ok(found.into_iter().flatten().collect())
}

/// The merge that makes `tok` (rank `rank`): BPE over its bytes with the tokens
/// ranked below it, down to two parts; None when no two parts remain.
fn last_merge(by_bytes: &FxMap<&[u8], u32>, tok: &[u8], rank: u32) -> Option<(u32, u32)> {
    // parts as byte ranges; merge the adjacent pair whose concatenation has the
    // lowest rank below `rank`, leftmost first
    let mut bounds: Vec<usize> = (0..=tok.len()).collect();
    loop {
        let mut best: Option<(u32, usize)> = None;
        for i in 0..bounds.len().saturating_sub(2) {
            if let Some(&r) = by_bytes.get(&tok[bounds[i]..bounds[i + 2]]) {
                if r < rank && best.map_or(true, |(br, _)| r < br) {
                    best = Some((r, i));
                }
            }
        }
        match best {
            Some((_, i)) => {
                bounds.remove(i + 1);
            }
            None => break,
        }
    }
    if bounds.len() != 3 {
        return None;
    }
    match (by_bytes.get(&tok[bounds[0]..bounds[1]]), by_bytes.get(&tok[bounds[1]..bounds[2]])) {
        (Some(&a), Some(&b)) => Some((a, b)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_short_in_equals_pack_short() {
        let text: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37).wrapping_add(1)).collect();
        for s in 0..text.len() {
            for e in s + 1..=text.len().min(s + 20) {
                assert_eq!(pack_short_in(&text, s, e), pack_short(&text[s..e]), "{s}..{e}");
            }
        }
    }

    /// A tiny vocabulary: bytes as ids 0..255, merges a+b, ab+c, b+c, then specials.
    fn tiny() -> Bpe {
        let mut toks: Vec<(Vec<u8>, u32)> = (0..256u32).map(|b| (vec![b as u8], b)).collect();
        toks.push((b"ab".to_vec(), 256));
        toks.push((b"abc".to_vec(), 257));
        toks.push((b"bc".to_vec(), 258));
        toks.push((b"aa".to_vec(), 259));
        let merges = vec![(97, 98), (256, 99), (98, 99), (97, 97)];
        Bpe::new(toks, merges, vec![("<|end|>".into(), 260)], Pattern::Gpt2).unwrap()
    }

    #[test]
    fn ids_far_past_the_token_count_are_refused_before_allocating() {
        let toks: Vec<(Vec<u8>, u32)> = (0..256u32).map(|b| (vec![b as u8], b)).collect();
        let e = Bpe::new(toks.clone(), vec![], vec![("<|x|>".into(), u32::MAX - 1)], Pattern::Gpt2).err().unwrap();
        assert!(e.contains("special token id 4294967294 is out of range"), "{e}");
        let mut far = toks.clone();
        far[7].1 = 300_000_000;
        let e = Bpe::new(far, vec![], vec![], Pattern::Gpt2).err().unwrap();
        assert!(e.contains("token id 300000000 is out of range for a vocabulary of 256 tokens"), "{e}");
        // o200k-style gaps between the ranks and the special ids stay allowed
        assert!(Bpe::new(toks, vec![], vec![("<|x|>".into(), 1000)], Pattern::Gpt2).is_ok());
    }

    #[test]
    fn merges_in_priority_order() {
        let t = tiny();
        assert_eq!(t.encode_ordinary("abc"), vec![257]);
        assert_eq!(t.encode_ordinary("bca"), vec![258, 97]);
        assert_eq!(t.encode_ordinary("aaa"), vec![259, 97]);
        assert_eq!(t.encode_ordinary("aaaa"), vec![259, 259]);
        assert_eq!(t.encode_ordinary("abcab"), vec![257, 256]);
    }

    #[test]
    fn long_and_small_agree() {
        let t = tiny();
        let mut state = 12345u64;
        for len in [2usize, 3, 10, 129, 300, 1000] {
            for _ in 0..20 {
                let piece: Vec<u8> = (0..len)
                    .map(|_| {
                        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        b"abc"[(state >> 33) as usize % 3]
                    })
                    .collect();
                let (mut x, mut y, mut z) = (Vec::new(), Vec::new(), Vec::new());
                t.merge_small(&piece, &mut x);
                t.merge_heap(&piece, &mut y);
                t.merge_long(&piece, &mut z);
                assert_eq!(x, y, "{:?}", String::from_utf8_lossy(&piece));
                assert_eq!(x, z, "{:?}", String::from_utf8_lossy(&piece));
            }
        }
    }

    struct Lcg(u64);
    impl Lcg {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((self.0 >> 33) % n as u64) as usize
        }
    }

    /// All three merges of one piece, checked equal (merge_small is the reference).
    fn assert_merges_agree(t: &Bpe, piece: &[u8]) -> Vec<u32> {
        let (mut x, mut y, mut z) = (Vec::new(), Vec::new(), Vec::new());
        t.merge_small(piece, &mut x);
        t.merge_heap(piece, &mut y);
        t.merge_long(piece, &mut z);
        assert_eq!(x, y, "merge_heap on {:?}", String::from_utf8_lossy(piece));
        assert_eq!(x, z, "merge_long on {:?}", String::from_utf8_lossy(piece));
        x
    }

    #[test]
    fn merges_out_of_dependency_order_go_through_urgent() {
        // (ab, a) outranks the (a, b) that makes ab. In "abab" the heap order
        // merges ab at 0, then at once its pair with the next a (aba), which
        // takes the a of the second (a, b) away: [aba, b]. Merging the whole
        // (a, b) bucket first would give [ab, ab].
        let mut toks: Vec<(Vec<u8>, u32)> = (0..256u32).map(|b| (vec![b as u8], b)).collect();
        toks.push((b"ab".to_vec(), 256));
        toks.push((b"aba".to_vec(), 257));
        let t = Bpe::new(toks, vec![(256, 97), (97, 98)], vec![], Pattern::Gpt2).unwrap();
        assert_eq!(assert_merges_agree(&t, b"abab"), vec![257, 98]);
        assert_eq!(assert_merges_agree(&t, &b"ab".repeat(3000)), [257, 98].repeat(1500));
        let mut rng = Lcg(3);
        for _ in 0..20 {
            let piece: Vec<u8> = (0..3000).map(|_| b"ab"[rng.below(2)]).collect();
            assert_merges_agree(&t, &piece);
        }
    }

    #[test]
    fn long_merge_walks_tokens_of_256_bytes_and_more() {
        // a, aa, a^4 ... a^512: lengths past the one-byte length table
        let mut toks: Vec<(Vec<u8>, u32)> = (0..256u32).map(|b| (vec![b as u8], b)).collect();
        let mut merges = Vec::new();
        let mut prev = b'a' as u32;
        for k in 1..=9 {
            let id = toks.len() as u32;
            toks.push((vec![b'a'; 1 << k], id));
            merges.push((prev, prev));
            prev = id;
        }
        let t = Bpe::new(toks, merges, vec![], Pattern::Gpt2).unwrap();
        let got = assert_merges_agree(&t, &[b'a'; 5000]);
        let lens: Vec<usize> = got.iter().map(|&id| t.token_bytes(id as i64).unwrap().len()).collect();
        assert_eq!(lens, [vec![512; 9], vec![256, 128, 8]].concat()); // 5000 = 9 * 512 + 392
    }

    #[test]
    fn long_merge_is_exact_on_random_vocabularies() {
        // Random tokens over a 4-letter alphabet, merges in random priority
        // order (so often out of dependency order), random pieces with long
        // runs: every path must give the array scan's answer.
        let mut rng = Lcg(7);
        for vocab in 0..40 {
            let alphabet = b"abcd";
            let mut toks: Vec<(Vec<u8>, u32)> = (0..256u32).map(|b| (vec![b as u8], b)).collect();
            let mut merges = Vec::new();
            let mut seen: FxSet<Vec<u8>> = FxSet::default();
            let mut pool: Vec<u32> = alphabet.iter().map(|&c| c as u32).collect();
            while merges.len() < 10 + vocab {
                let (a, b) = (pool[rng.below(pool.len())], pool[rng.below(pool.len())]);
                let cat = [toks[a as usize].0.clone(), toks[b as usize].0.clone()].concat();
                if cat.len() > 12 || !seen.insert(cat.clone()) {
                    continue;
                }
                let id = toks.len() as u32;
                toks.push((cat, id));
                merges.push((a, b));
                pool.push(id);
            }
            for i in (1..merges.len()).rev() {
                merges.swap(i, rng.below(i + 1));
            }
            let t = Bpe::new(toks, merges, vec![], Pattern::Gpt2).unwrap();
            for _ in 0..6 {
                let len = [2, 50, 200, 2047, 2048, 5000][rng.below(6)];
                let mut piece = Vec::with_capacity(len);
                while piece.len() < len {
                    let c = alphabet[rng.below(alphabet.len())];
                    let run = if rng.below(4) == 0 { rng.below(200) + 1 } else { 1 };
                    piece.extend(std::iter::repeat(c).take(run.min(len - piece.len())));
                }
                assert_merges_agree(&t, &piece);
            }
        }
    }

    #[test]
    fn specials_and_decode() {
        let t = tiny();
        let ids = t.encode_with_specials("ab<|end|>c", &["<|end|>"]);
        assert_eq!(ids, vec![256, 260, 99]);
        assert_eq!(t.encode_with_specials("ab<|end|>c", &[]).len(), 9);
        assert_eq!(t.decode_bytes(ids.iter().map(|&x| x as i64)).unwrap(), b"ab<|end|>c");
        assert_eq!(
            t.decode_bytes([1, 999]),
            Err(EncodeError::UnknownId { id: 999, position: 1 })
        );
        assert!(t.decode_bytes([-1]).is_err());
    }

    #[test]
    fn ranks_roundtrip_merges() {
        let t = tiny();
        let d = derive_merges(t.tokens()).unwrap();
        assert_eq!(d, vec![(97, 98), (256, 99), (98, 99), (97, 97)]);
    }

    #[test]
    fn rejects_bad_vocabularies() {
        let toks: Vec<(Vec<u8>, u32)> = (0..255u32).map(|b| (vec![b as u8], b)).collect();
        assert!(Bpe::new(toks, vec![], vec![], Pattern::Gpt2).err().unwrap().contains("0xff"));
        let mut toks: Vec<(Vec<u8>, u32)> = (0..256u32).map(|b| (vec![b as u8], b)).collect();
        toks.push((b"a".to_vec(), 256));
        assert!(Bpe::new(toks, vec![], vec![], Pattern::Gpt2).err().unwrap().contains("duplicate"));
        let toks: Vec<(Vec<u8>, u32)> = (0..256u32).map(|b| (vec![b as u8], b)).collect();
        assert!(Bpe::new(toks, vec![(1, 2)], vec![], Pattern::Gpt2).err().unwrap().contains("not a token"));
    }

    #[test]
    fn batch_is_deterministic() {
        let t = tiny();
        let texts: Vec<String> = (0..100).map(|i| "abc ".repeat(i)).collect();
        let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
        let one = t.encode_batch(&refs, &[], 1);
        let two = t.encode_batch(&refs, &[], 2);
        assert_eq!(one, two);
    }
}

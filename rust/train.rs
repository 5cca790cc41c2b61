//! The byte-level BPE trainer.
//!
//! Two phases, usable separately:
//!
//! 1. **Counting** (`count_texts`, `count_files`, `merge_counts`): pre-tokenize
//!    text with `pretokenize::split` and count each distinct pre-token. Files are
//!    read in blocks and cut into chunks that are counted in parallel (rayon);
//!    counts are sums, so the result does not depend on the thread count.
//! 2. **Merging** (`train_bpe`): the BPE merge loop over the counted words.
//!
//! Semantics of the merge phase (the contract the Python reference trainer in
//! tests/reference_trainer.py reproduces naively):
//!
//! - The base vocabulary is the 256 single bytes, ids 0..=255 in byte order.
//! - A word is the byte sequence of one distinct pre-token, with its count;
//!   merges never cross pre-token boundaries.
//! - The count of a pair (l, r) is the sum over words of count(word) times the
//!   number of adjacent positions holding (l, r) (overlaps counted: "aaa" holds
//!   (a, a) twice).
//! - Each step merges the pair with the highest count; ties go to the smallest
//!   (l, r). The merge replaces occurrences left to right, non-overlapping.
//! - The merged token gets the next id (256, 257, ...). If its bytes already
//!   exist as a token (reachable by two different splits, e.g. "a"+"bc" after
//!   "ab"+"c"), the pair is merged into that existing token and no new id is
//!   made, so token byte strings stay unique (tiktoken and GPT-2 files need it).
//! - Training stops after `n_new_tokens` new tokens, when no pair is left, or
//!   when the best count is below `min_frequency`.
//!
//! Incremental algorithm: words are stored once (flat symbol array), pair
//! counts are updated only for words that hold the merged pair (found through a
//! pair -> word index list), and the best pair comes from a max-heap with lazy
//! invalidation (an entry is used only if its count is still the pair's count).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::pretokenize::{is_safe_cut, last_safe_cut, split, Pattern};

pub use crate::fxhash::FxMap;

/// Pre-token -> count.
pub type Counts = FxMap<String, u64>;

// ---------------------------------------------------------------------------
// Errors

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrainError {
    /// A file could not be opened or read.
    Io { path: PathBuf, kind: std::io::ErrorKind, message: String },
    /// A file is not valid UTF-8; `offset` is the byte offset of the first bad byte.
    InvalidUtf8 { path: PathBuf, offset: u64 },
    /// Nothing to train on.
    EmptyCorpus,
    /// A progress callback asked to stop.
    Interrupted,
    /// Counts so large that pair counts would overflow 63 bits.
    CountsTooLarge,
}

impl fmt::Display for TrainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrainError::Io { path, message, .. } => write!(f, "{}: {}", path.display(), message),
            TrainError::InvalidUtf8 { path, offset } => write!(
                f,
                "{}: not valid UTF-8 at byte offset {} (pass errors=\"replace\" to substitute U+FFFD)",
                path.display(),
                offset
            ),
            TrainError::EmptyCorpus => write!(f, "empty corpus: no text to train on"),
            TrainError::Interrupted => write!(f, "interrupted"),
            TrainError::CountsTooLarge => {
                write!(f, "word counts too large: sum of count x length must stay below 2**63")
            }
        }
    }
}

impl std::error::Error for TrainError {}

// ---------------------------------------------------------------------------
// Counting

/// Add the pre-tokens of `text` to `counts` (keys borrowed from `text`).
pub fn count_into<'a>(text: &'a str, pattern: Pattern, counts: &mut FxMap<&'a str, u64>) {
    for piece in split(text, pattern) {
        *counts.entry(piece).or_insert(0) += 1;
    }
}

/// Add a borrowed count map into an owned one (allocating only for new words).
fn absorb(into: &mut Counts, from: FxMap<&str, u64>) {
    for (k, v) in from {
        match into.get_mut(k) {
            Some(c) => *c += v,
            None => {
                into.insert(k.to_owned(), v);
            }
        }
    }
}

/// Merge count maps (e.g. of corpus shards counted elsewhere).
pub fn merge_counts(into: &mut Counts, from: Counts) {
    if into.is_empty() {
        *into = from;
        return;
    }
    for (k, v) in from {
        *into.entry(k).or_insert(0) += v;
    }
}

/// Count the pre-tokens of independent texts (documents), in parallel.
/// `pool`: run on this rayon pool instead of the global one.
pub fn count_texts<S: AsRef<str> + Sync>(texts: &[S], pattern: Pattern, pool: Option<&rayon::ThreadPool>) -> Counts {
    // Group texts into ~1 MB work items so tiny documents do not drown rayon.
    let mut groups: Vec<&[S]> = Vec::new();
    let mut start = 0;
    let mut size = 0;
    for (i, t) in texts.iter().enumerate() {
        size += t.as_ref().len() + 16;
        if size >= CHUNK {
            groups.push(&texts[start..=i]);
            start = i + 1;
            size = 0;
        }
    }
    if start < texts.len() {
        groups.push(&texts[start..]);
    }
    let work = || -> Vec<FxMap<&str, u64>> {
        groups
            .par_iter()
            .map(|g| {
                let mut m = FxMap::default();
                for t in g.iter() {
                    count_into(t.as_ref(), pattern, &mut m);
                }
                m
            })
            .collect()
    };
    let maps = match pool {
        Some(p) => p.install(work),
        None => work(),
    };
    let mut counts = Counts::default();
    for m in maps {
        absorb(&mut counts, m);
    }
    counts
}

/// Target size of one parallel counting chunk.
const CHUNK: usize = 1 << 20;
/// How much file text is read before a parallel counting round: enough chunks
/// to keep every thread busy, small enough for a live progress bar.
fn batch_bytes_for(threads: usize) -> usize {
    (threads * 4 * CHUNK).max(8 << 20)
}

/// Split `b` into pieces of about CHUNK bytes at cut points.
fn chunk_bounds(b: &[u8], pattern: Pattern) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    while b.len() - start > CHUNK + CHUNK / 2 {
        let mut i = start + CHUNK;
        let limit = (start + 2 * CHUNK).min(b.len());
        while i < limit && !is_safe_cut(b, i, pattern) {
            i += 1;
        }
        if i >= limit {
            break; // no cut nearby: keep the rest as one chunk
        }
        out.push((start, i));
        start = i;
    }
    out.push((start, b.len()));
    out
}

/// One segment of file text (cut at a safe point) waiting to be counted.
struct Segment {
    file: usize,
    offset: u64,
    bytes: Vec<u8>,
}

/// Count the pre-tokens of text files, streamed in blocks and counted in
/// parallel. Each file is a separate text (no piece spans two files).
/// `replace_errors`: substitute U+FFFD for invalid UTF-8 instead of failing.
/// `progress(bytes_done)` is called after each parallel round; returning false
/// stops with `TrainError::Interrupted`. `pool`: run on this rayon pool
/// instead of the global one (the callback always runs on the calling thread).
pub fn count_files<P: AsRef<Path>>(
    paths: &[P],
    pattern: Pattern,
    replace_errors: bool,
    pool: Option<&rayon::ThreadPool>,
    progress: &mut dyn FnMut(u64) -> bool,
) -> Result<Counts, TrainError> {
    // Read size; tiny under `cargo test` so the tests cross many block boundaries.
    const BLOCK: usize = if cfg!(test) { 100_000 } else { 8 << 20 };
    let mut counts = Counts::default();
    let mut batch: Vec<Segment> = Vec::new();
    let mut batch_bytes = 0usize;
    let mut done = 0u64;
    let batch_limit = batch_bytes_for(pool.map_or_else(rayon::current_num_threads, |p| p.current_num_threads()));
    let paths: Vec<&Path> = paths.iter().map(|p| p.as_ref()).collect();
    for (fi, path) in paths.iter().enumerate() {
        let io_err = |e: std::io::Error| TrainError::Io { path: path.to_path_buf(), kind: e.kind(), message: e.to_string() };
        let mut f = File::open(path).map_err(io_err)?;
        if f.metadata().map_err(io_err)?.is_dir() {
            return Err(TrainError::Io {
                path: path.to_path_buf(),
                kind: std::io::ErrorKind::Other,
                message: "is a directory, not a text file".into(),
            });
        }
        let mut buf: Vec<u8> = Vec::new();
        let mut offset = 0u64; // file offset of buf[0]
        let mut eof = false;
        while !eof {
            let old = buf.len();
            buf.resize(old + BLOCK, 0);
            let mut filled = old;
            // Fill the block (read may return short counts).
            while filled < buf.len() {
                let n = f.read(&mut buf[filled..]).map_err(io_err)?;
                if n == 0 {
                    eof = true;
                    break;
                }
                filled += n;
            }
            buf.truncate(filled);
            let cut = if eof { Some(buf.len()) } else { last_safe_cut(&buf, old.saturating_sub(1), buf.len(), pattern) };
            if let Some(cut) = cut {
                let rest = buf.split_off(cut);
                let seg = std::mem::replace(&mut buf, rest);
                let n = seg.len();
                if n > 0 {
                    batch.push(Segment { file: fi, offset, bytes: seg });
                }
                offset += n as u64;
                batch_bytes += n;
                if batch_bytes >= batch_limit {
                    count_batch(&batch, &paths, pattern, replace_errors, pool, &mut counts)?;
                    done += batch_bytes as u64;
                    batch.clear();
                    batch_bytes = 0;
                    if !progress(done) {
                        return Err(TrainError::Interrupted);
                    }
                }
            }
        }
    }
    count_batch(&batch, &paths, pattern, replace_errors, pool, &mut counts)?;
    done += batch_bytes as u64;
    if !progress(done) {
        return Err(TrainError::Interrupted);
    }
    Ok(counts)
}

fn count_batch(
    batch: &[Segment],
    paths: &[&Path],
    pattern: Pattern,
    replace_errors: bool,
    pool: Option<&rayon::ThreadPool>,
    counts: &mut Counts,
) -> Result<(), TrainError> {
    match pool {
        Some(p) => p.install(|| count_batch_here(batch, paths, pattern, replace_errors, counts)),
        None => count_batch_here(batch, paths, pattern, replace_errors, counts),
    }
}

fn count_batch_here(
    batch: &[Segment],
    paths: &[&Path],
    pattern: Pattern,
    replace_errors: bool,
    counts: &mut Counts,
) -> Result<(), TrainError> {
    // (segment, start, end) work items of about CHUNK bytes
    let mut items: Vec<(usize, usize, usize)> = Vec::new();
    for (si, s) in batch.iter().enumerate() {
        for (a, b) in chunk_bounds(&s.bytes, pattern) {
            items.push((si, a, b));
        }
    }
    // Invalid UTF-8 sequences never straddle a chunk boundary (chunks are cut next
    // to ASCII bytes), so lossy conversion per chunk equals lossy conversion of the file.
    let lossy: Vec<Option<String>> = items
        .par_iter()
        .map(|&(si, a, b)| {
            let bytes = &batch[si].bytes[a..b];
            match std::str::from_utf8(bytes) {
                Ok(_) => Ok(None),
                Err(_) if replace_errors => Ok(Some(String::from_utf8_lossy(bytes).into_owned())),
                Err(e) => Err(TrainError::InvalidUtf8 {
                    path: paths[batch[si].file].to_path_buf(),
                    offset: batch[si].offset + (a + e.valid_up_to()) as u64,
                }),
            }
        })
        .collect::<Vec<_>>()
        .into_iter()
        .collect::<Result<_, _>>()?; // the first error in file order
    let maps: Vec<FxMap<&str, u64>> = items
        .par_iter()
        .zip(lossy.par_iter())
        .map(|(&(si, a, b), fixed)| {
            let text: &str = match fixed {
                Some(s) => s.as_str(),
                // validated above
                None => unsafe { std::str::from_utf8_unchecked(&batch[si].bytes[a..b]) },
            };
            let mut m = FxMap::default();
            count_into(text, pattern, &mut m);
            m
        })
        .collect();
    for m in maps {
        absorb(counts, m);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Merging

#[inline]
fn pack(l: u32, r: u32) -> u64 {
    ((l as u64) << 32) | r as u64
}

#[inline]
fn unpack(p: u64) -> (u32, u32) {
    ((p >> 32) as u32, p as u32)
}

/// One merge of the trained vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Merge {
    pub left: u32,
    pub right: u32,
    /// The token the pair became (a new id, or an existing one with the same bytes).
    pub id: u32,
    /// The pair's total count when it was merged.
    pub count: u64,
}

#[derive(Clone, Debug, Default)]
pub struct TrainResult {
    /// Every merge done, in order.
    pub merges: Vec<Merge>,
    /// Token id -> bytes: the 256 bytes, then one entry per new token.
    pub tokens: Vec<Vec<u8>>,
    /// Length in tokens of the training text as the merges left it (sum over
    /// words of count * symbols); bytes / this = the compression achieved.
    pub training_tokens: u128,
}

/// Replace the non-overlapping occurrences of (a, b) in `sym`, left to right,
/// by `new`; report the pair count changes of this one word via `change(pair, ±1)`.
/// Returns the new length. Changes to the merged pair itself are not reported.
#[inline]
fn merge_word(sym: &mut [u32], a: u32, b: u32, new: u32, mut change: impl FnMut(u64, i64)) -> usize {
    let n = sym.len();
    let merged = pack(a, b);
    let (mut i, mut j) = (0usize, 0usize);
    while i < n {
        if i + 1 < n && sym[i] == a && sym[i + 1] == b {
            if j > 0 {
                // the left neighbour is already final (it may itself be `new`)
                let prev = sym[j - 1];
                let old = pack(prev, a);
                if old != merged {
                    change(old, -1);
                }
                change(pack(prev, new), 1);
            }
            if i + 2 < n {
                let next = sym[i + 2];
                let old = pack(b, next);
                if old != merged {
                    change(old, -1);
                }
                change(pack(new, next), 1);
            }
            sym[j] = new;
            j += 1;
            i += 2;
        } else {
            sym[j] = sym[i];
            j += 1;
            i += 1;
        }
    }
    j
}

/// Train BPE merges on counted words.
///
/// `words`: (bytes, count) of each distinct pre-token (order does not matter;
/// duplicates are summed). `n_new_tokens`: how many tokens to add to the 256
/// bytes. `progress(new_tokens_so_far)` is called every `progress_every` new
/// tokens; returning false stops with `TrainError::Interrupted`.
pub fn train_bpe(
    words: &[(&[u8], u64)],
    n_new_tokens: usize,
    min_frequency: u64,
    progress_every: usize,
    progress: &mut dyn FnMut(usize) -> bool,
) -> Result<TrainResult, TrainError> {
    // Words stored once: symbols in one flat array, word w at start[w]..start[w]+len[w].
    let mut order: Vec<usize> = (0..words.len()).filter(|&i| words[i].1 > 0 && !words[i].0.is_empty()).collect();
    order.sort_unstable_by(|&x, &y| words[x].0.cmp(words[y].0));
    let mut sym: Vec<u32> = Vec::new();
    let mut start: Vec<usize> = Vec::new();
    let mut len: Vec<u32> = Vec::new();
    let mut count: Vec<i64> = Vec::new();
    let mut prev: Option<&[u8]> = None;
    for &i in &order {
        let (bytes, c) = words[i];
        let c = c.min(i64::MAX as u64) as i64;
        // sorted, so duplicates are adjacent: sum them
        if prev == Some(bytes) {
            if let Some(last) = count.last_mut() {
                *last = last.saturating_add(c);
            }
            continue;
        }
        prev = Some(bytes);
        start.push(sym.len());
        len.push(bytes.len() as u32);
        count.push(c);
        sym.extend(bytes.iter().map(|&b| b as u32));
    }
    if start.is_empty() {
        return Err(TrainError::EmptyCorpus);
    }
    // Every pair count is at most sum(count * length): keep that within i64.
    let total: u128 = (0..start.len()).map(|w| len[w] as u128 * count[w] as u128).sum();
    if total > i64::MAX as u128 {
        return Err(TrainError::CountsTooLarge);
    }

    let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    let mut token_id: FxMap<Vec<u8>, u32> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();

    // Initial pair counts and the pair -> words index (each list sorted, unique).
    let mut pair_count: FxMap<u64, i64> = FxMap::default();
    let mut where_: FxMap<u64, Vec<u32>> = FxMap::default();
    for w in 0..start.len() {
        let s = &sym[start[w]..start[w] + len[w] as usize];
        for k in 1..s.len() {
            let p = pack(s[k - 1], s[k]);
            *pair_count.entry(p).or_insert(0) += count[w];
            let list = where_.entry(p).or_default();
            if list.last() != Some(&(w as u32)) {
                list.push(w as u32);
            }
        }
    }
    // Max-heap on (count, smallest pair): Reverse(pack) makes smaller (l, r) win ties.
    let mut heap: BinaryHeap<(i64, Reverse<u64>)> = pair_count.iter().map(|(&p, &c)| (c, Reverse(p))).collect();

    let mut merges: Vec<Merge> = Vec::new();
    let mut touched: Vec<u64> = Vec::new();
    let mut new_tokens = 0usize;
    let min_frequency = min_frequency.max(1).min(i64::MAX as u64) as i64;
    while new_tokens < n_new_tokens {
        let Some((c, Reverse(p))) = heap.pop() else { break };
        if pair_count.get(&p) != Some(&c) {
            continue; // stale entry: the pair's count changed and was pushed again
        }
        if c < min_frequency {
            break;
        }
        let (a, b) = unpack(p);
        let mut bytes = tokens[a as usize].clone();
        bytes.extend_from_slice(&tokens[b as usize]);
        let new = match token_id.get(&bytes) {
            Some(&id) => id,
            None => {
                let id = tokens.len() as u32;
                token_id.insert(bytes.clone(), id);
                tokens.push(bytes);
                new_tokens += 1;
                id
            }
        };
        merges.push(Merge { left: a, right: b, id: new, count: c as u64 });
        pair_count.remove(&p);
        let mut list = where_.remove(&p).unwrap_or_default();
        list.sort_unstable();
        list.dedup();
        touched.clear();
        for &w in &list {
            let w = w as usize;
            let s0 = start[w];
            let wc = count[w];
            let l = len[w] as usize;
            let pair_count = &mut pair_count;
            let where_ = &mut where_;
            let touched = &mut touched;
            let newlen = merge_word(&mut sym[s0..s0 + l], a, b, new, |q, d| {
                *pair_count.entry(q).or_insert(0) += d * wc;
                touched.push(q);
                if d > 0 {
                    let lst = where_.entry(q).or_default();
                    if lst.last() != Some(&(w as u32)) {
                        lst.push(w as u32);
                    }
                }
            });
            len[w] = newlen as u32;
        }
        touched.sort_unstable();
        touched.dedup();
        for &q in &touched {
            match pair_count.get(&q) {
                Some(&qc) if qc > 0 => heap.push((qc, Reverse(q))),
                _ => {
                    // gone from every word: drop its bookkeeping
                    pair_count.remove(&q);
                    where_.remove(&q);
                }
            }
        }
        if progress_every > 0 && new_tokens % progress_every == 0 && new_tokens > 0 && !progress(new_tokens) {
            return Err(TrainError::Interrupted);
        }
    }
    let training_tokens = (0..start.len()).map(|w| len[w] as u128 * count[w] as u128).sum();
    Ok(TrainResult { merges, tokens, training_tokens })
}

/// Train from a count map (convenience for Rust users and tests).
pub fn train_from_counts(counts: &Counts, n_new_tokens: usize, min_frequency: u64) -> Result<TrainResult, TrainError> {
    let words: Vec<(&[u8], u64)> = counts.iter().map(|(k, &v)| (k.as_bytes(), v)).collect();
    train_bpe(&words, n_new_tokens, min_frequency, 0, &mut |_| true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The naive trainer: recount every pair each step (the same semantics).
    fn naive(words: &[(&[u8], u64)], n_new: usize, min_freq: u64) -> Vec<(u32, u32, u32)> {
        let mut ws: Vec<(Vec<u32>, u64)> =
            words.iter().map(|(b, c)| (b.iter().map(|&x| x as u32).collect(), *c)).collect();
        let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        let mut out = Vec::new();
        let mut added = 0;
        while added < n_new {
            let mut pc: std::collections::BTreeMap<(u32, u32), u64> = Default::default();
            for (w, c) in &ws {
                for k in 1..w.len() {
                    *pc.entry((w[k - 1], w[k])).or_insert(0) += c;
                }
            }
            let best = pc.iter().max_by(|x, y| x.1.cmp(y.1).then(y.0.cmp(x.0)));
            let Some((&(a, b), &c)) = best else { break };
            if c < min_freq.max(1) {
                break;
            }
            let mut bytes = tokens[a as usize].clone();
            bytes.extend_from_slice(&tokens[b as usize]);
            let id = match tokens.iter().position(|t| *t == bytes) {
                Some(i) => i as u32,
                None => {
                    tokens.push(bytes);
                    added += 1;
                    tokens.len() as u32 - 1
                }
            };
            out.push((a, b, id));
            for (w, _) in ws.iter_mut() {
                let mut nw = Vec::with_capacity(w.len());
                let mut i = 0;
                while i < w.len() {
                    if i + 1 < w.len() && w[i] == a && w[i + 1] == b {
                        nw.push(id);
                        i += 2;
                    } else {
                        nw.push(w[i]);
                        i += 1;
                    }
                }
                *w = nw;
            }
        }
        out
    }

    fn fast(words: &[(&[u8], u64)], n_new: usize, min_freq: u64) -> Vec<(u32, u32, u32)> {
        train_bpe(words, n_new, min_freq, 0, &mut |_| true).unwrap().merges.iter().map(|m| (m.left, m.right, m.id)).collect()
    }

    fn words_of(text: &str) -> Vec<(Vec<u8>, u64)> {
        let mut m: Counts = Default::default();
        let mut b = FxMap::default();
        count_into(text, Pattern::Gpt2, &mut b);
        absorb(&mut m, b);
        let mut v: Vec<(Vec<u8>, u64)> = m.into_iter().map(|(k, v)| (k.into_bytes(), v)).collect();
        v.sort();
        v
    }

    #[test]
    fn merge_word_overlaps() {
        let mut changes = Vec::new();
        let mut w = vec![1, 1, 1, 1];
        let n = merge_word(&mut w, 1, 1, 9, |p, d| changes.push((unpack(p), d)));
        assert_eq!(&w[..n], &[9, 9]);
        let net: i64 = changes.iter().filter(|(p, _)| *p == (9, 9)).map(|x| x.1).sum();
        assert_eq!(net, 1);
        let mut w = vec![1, 1, 1];
        let n = merge_word(&mut w, 1, 1, 9, |_, _| {});
        assert_eq!(&w[..n], &[9, 1]);
    }

    #[test]
    fn matches_naive_on_text() {
        let text = "the cat sat on the mat; the hat, that cat! aaaa aaa aa a abab ababab \
                    low lower lowest newer newest wider widest 1234 12 123\n\n  tabs\tand  spaces ";
        let words = words_of(&text.repeat(3));
        let refs: Vec<(&[u8], u64)> = words.iter().map(|(b, c)| (&b[..], *c)).collect();
        for n in [1, 5, 40, 200] {
            assert_eq!(fast(&refs, n, 1), naive(&refs, n, 1), "n_new={n}");
        }
        assert_eq!(fast(&refs, 200, 4), naive(&refs, 200, 4));
    }

    #[test]
    fn random_words_match_naive() {
        // Small alphabets stress overlaps ("aaa") and ties.
        let mut seed = 12345u64;
        let mut rnd = |n: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for _ in 0..300 {
            let nw = 1 + rnd(8) as usize;
            let owned: Vec<(Vec<u8>, u64)> = (0..nw)
                .map(|_| ((0..1 + rnd(7)).map(|_| b"abc"[rnd(3) as usize]).collect(), 1 + rnd(5)))
                .collect();
            let words: Vec<(&[u8], u64)> = owned.iter().map(|(b, c)| (&b[..], *c)).collect();
            let f = fast(&words, 30, 1);
            assert_eq!(f, naive(&words, 30, 1), "{owned:?}");
            let r = train_bpe(&words, 30, 1, 0, &mut |_| true).unwrap();
            let mut seen = std::collections::HashSet::new();
            for t in &r.tokens {
                assert!(seen.insert(t.clone()), "duplicate token bytes {t:?}");
            }
        }
    }

    #[test]
    fn ties_smallest_pair_and_min_frequency() {
        let words: Vec<(&[u8], u64)> = vec![(b"ba", 2), (b"ab", 2), (b"cd", 1)];
        let f = fast(&words, 10, 1);
        assert_eq!(f[0], (b'a' as u32, b'b' as u32, 256));
        assert_eq!(f[1], (b'b' as u32, b'a' as u32, 257));
        assert_eq!(fast(&words, 10, 2).len(), 2);
        assert_eq!(fast(&words, 1, 1).len(), 1);
    }

    #[test]
    fn empty_corpus() {
        assert_eq!(train_bpe(&[], 10, 1, 0, &mut |_| true).unwrap_err(), TrainError::EmptyCorpus);
        let words: Vec<(&[u8], u64)> = vec![(b"", 3)];
        assert_eq!(train_bpe(&words, 10, 1, 0, &mut |_| true).unwrap_err(), TrainError::EmptyCorpus);
        let words: Vec<(&[u8], u64)> = vec![(b"ab", u64::MAX / 4), (b"abc", u64::MAX / 4)];
        assert_eq!(train_bpe(&words, 10, 1, 0, &mut |_| true).unwrap_err(), TrainError::CountsTooLarge);
    }

    #[test]
    fn chunking_preserves_pieces() {
        let text = "Hello world,  this is   a test.\n\n  Again 123 4567 'll 's x".repeat(50_000);
        let b = text.as_bytes();
        let bounds = chunk_bounds(b, Pattern::Gpt2);
        assert!(bounds.len() > 1);
        let mut whole = FxMap::default();
        count_into(&text, Pattern::Gpt2, &mut whole);
        let mut parts = FxMap::default();
        for (x, y) in bounds {
            count_into(&text[x..y], Pattern::Gpt2, &mut parts);
        }
        assert_eq!(whole, parts);
    }

    #[test]
    fn text_without_spaces_is_still_chunked() {
        // Chinese lines without any U+0020: cut at the line ends
        let text = "日本語の文章は空白を使わずに書かれる。\n".repeat(200_000);
        for pattern in crate::pretokenize::Pattern::ALL {
            let bounds = chunk_bounds(text.as_bytes(), pattern);
            assert!(bounds.len() > 4, "{pattern:?}: {} chunks", bounds.len());
            let mut whole = FxMap::default();
            count_into(&text, pattern, &mut whole);
            let mut parts = FxMap::default();
            for (x, y) in bounds {
                count_into(&text[x..y], pattern, &mut parts);
            }
            assert_eq!(whole, parts);
        }
    }

    #[test]
    fn streamed_counting_same_on_any_thread_count_and_pattern() {
        let dir = std::env::temp_dir().join(format!("gptlite-train-threads-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.txt");
        // cased words and contractions (o200k joins them), CR/LF before letters
        // and after punctuation, '/' runs, text without ASCII spaces
        let text = "Some TEXT, with Words; DON'T and they'Re 12345 numbers.\n\n Again   and again x/y\r\n!\nÉcole日本語。\n"
            .repeat(40_000);
        std::fs::write(&p, &text).unwrap();
        for pattern in Pattern::ALL {
            let whole = count_texts(&[text.as_str()], pattern, None);
            for n in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap();
                let streamed = count_files(&[&p], pattern, false, Some(&pool), &mut |_| true).unwrap();
                assert!(streamed == whole, "{pattern:?} on {n} threads");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn count_files_errors() {
        let dir = std::env::temp_dir().join(format!("gptlite-train-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.txt");
        std::fs::write(&good, "hello hello world").unwrap();
        let bad = dir.join("bad.txt");
        std::fs::write(&bad, b"abc def\xff ghi").unwrap();
        let c = count_files(&[&good], Pattern::Gpt2, false, None, &mut |_| true).unwrap();
        assert_eq!(c.get(" hello"), Some(&1));
        assert_eq!(c.get("hello"), Some(&1));
        let e = count_files(&[&good, &bad], Pattern::Gpt2, false, None, &mut |_| true).unwrap_err();
        assert_eq!(e, TrainError::InvalidUtf8 { path: bad.clone(), offset: 7 });
        let c = count_files(&[&bad], Pattern::Gpt2, true, None, &mut |_| true).unwrap();
        assert_eq!(c.get("\u{fffd}"), Some(&1));
        assert_eq!(c.get(" def"), Some(&1));
        let missing = dir.join("missing.txt");
        assert!(matches!(count_files(&[&missing], Pattern::Gpt2, false, None, &mut |_| true), Err(TrainError::Io { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

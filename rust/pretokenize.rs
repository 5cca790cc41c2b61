//! Pre-tokenization: cutting text into the pieces that BPE merges within.
//!
//! Three patterns, each implemented as a hand-written scanner that reproduces the
//! leftmost-first alternation semantics of the regex exactly:
//!
//! - `Gpt2`:   `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
//! - `Cl100k`: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
//! - `O200k`:  `O200K_REGEX` below: cl100k's shape with letters split by case
//!   (`X*Y+` / `X+Y*` over cased-letter classes that take in marks), the
//!   contractions as an optional case-insensitive suffix of letters, and `/`
//!   after punctuation runs (see the o200k section).
//!
//! A regex engine tries the alternatives in order at each position and takes the
//! first that matches; every alternative here is a greedy run of one character
//! class, so the scanners decide the alternative from the first one or two
//! characters and then extend a run. The only backtracking in the patterns is
//! `\s+(?!\S)`, which gives back exactly one whitespace character when the run is
//! followed by a non-space (handled explicitly below).
//!
//! Character classes (`\p{L}`, `\p{N}`, `\s` = Unicode `White_Space`) come from
//! regex-syntax's Unicode tables (Unicode 14.0 in regex-syntax 0.6.27, the same
//! version as CPython 3.11's `unicodedata`), built once into a 64K-entry table for
//! the BMP plus sorted ranges for the astral planes; ASCII uses a 128-entry table.

use std::sync::OnceLock;

/// Which pre-tokenization regex to reproduce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    Gpt2,
    Cl100k,
    O200k,
}

impl Pattern {
    pub fn from_name(s: &str) -> Option<Pattern> {
        match s {
            "gpt2" | "r50k" | "p50k" => Some(Pattern::Gpt2),
            "cl100k" => Some(Pattern::Cl100k),
            "o200k" => Some(Pattern::O200k),
            _ => None,
        }
    }

    /// Every pattern with a scanner, for the Python side's registry.
    pub const ALL: [Pattern; 3] = [Pattern::Gpt2, Pattern::Cl100k, Pattern::O200k];

    /// The names of `ALL`, quoted, for error messages: `'gpt2', 'cl100k', 'o200k'`.
    pub fn known_names() -> String {
        Pattern::ALL.iter().map(|p| format!("'{}'", p.name())).collect::<Vec<_>>().join(", ")
    }

    /// The scanner for a regex given as text: either the form documented here or
    /// tiktoken's (possessive, faster in a backtracking engine, same matches).
    pub fn from_regex(s: &str) -> Option<Pattern> {
        Pattern::ALL.into_iter().find(|p| s == p.regex() || s == p.tiktoken_regex())
    }

    /// The pattern string exactly as tiktoken's `openai_public.py` spells it, so
    /// that `Encoding._pat_str` compares equal to tiktoken's.
    pub fn tiktoken_regex(&self) -> &'static str {
        match self {
            Pattern::Gpt2 => GPT2_TIKTOKEN_REGEX,
            Pattern::Cl100k => CL100K_TIKTOKEN_REGEX,
            Pattern::O200k => O200K_REGEX,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Pattern::Gpt2 => "gpt2",
            Pattern::Cl100k => "cl100k",
            Pattern::O200k => "o200k",
        }
    }

    /// The regex this scanner reproduces (for documentation and tests).
    pub fn regex(&self) -> &'static str {
        match self {
            Pattern::Gpt2 => GPT2_REGEX,
            Pattern::Cl100k => CL100K_REGEX,
            Pattern::O200k => O200K_REGEX,
        }
    }
}

pub const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
pub const CL100K_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// o200k_base's pattern, character for character as in tiktoken.
pub const O200K_REGEX: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    "|",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    "|",
    r"\p{N}{1,3}",
    "|",
    r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
    "|",
    r"\s*[\r\n]+",
    "|",
    r"\s+(?!\S)",
    "|",
    r"\s+",
);
/// tiktoken's spellings of the gpt2 and cl100k patterns (possessive quantifiers
/// and `\s++$`): the same matches as the forms above.
pub const GPT2_TIKTOKEN_REGEX: &str =
    r"'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s";
pub const CL100K_TIKTOKEN_REGEX: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s";

// ---------------------------------------------------------------------------
// Character classes

/// Class of a character: exactly one of these (Unicode L, N and White_Space are
/// disjoint).
pub const OTHER: u8 = 0;
pub const LETTER: u8 = 1;
pub const NUMBER: u8 = 2;
pub const SPACE: u8 = 3;

struct Tables {
    bmp: Vec<u8>,                 // class of every code point < 0x10000
    astral: Vec<(u32, u32, u8)>,  // sorted, disjoint inclusive ranges >= 0x10000
}

fn class_ranges(pattern: &str) -> Vec<(u32, u32)> {
    use regex_syntax::hir::{Class, HirKind};
    // The patterns are constants; a failure here is a bug in this file, not user data.
    let hir = regex_syntax::Parser::new().parse(pattern).expect("valid class pattern");
    match hir.kind() {
        HirKind::Class(Class::Unicode(cls)) => {
            cls.iter().map(|r| (r.start() as u32, r.end() as u32)).collect()
        }
        other => panic!("unexpected HIR for {pattern}: {other:?}"),
    }
}

fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut bmp = vec![OTHER; 0x10000];
        let mut astral = Vec::new();
        for (pat, class) in [(r"\p{L}", LETTER), (r"\p{N}", NUMBER), (r"\s", SPACE)] {
            for (lo, hi) in class_ranges(pat) {
                for cp in lo..=hi.min(0xFFFF) {
                    bmp[cp as usize] = class;
                }
                if hi >= 0x10000 {
                    astral.push((lo.max(0x10000), hi, class));
                }
            }
        }
        astral.sort_unstable();
        Tables { bmp, astral }
    })
}

const fn ascii_table() -> [u8; 128] {
    let mut t = [OTHER; 128];
    let mut i = 0;
    while i < 128 {
        let c = i as u8;
        t[i] = if c.is_ascii_alphabetic() {
            LETTER
        } else if c.is_ascii_digit() {
            NUMBER
        } else if c == b' ' || (c >= 0x09 && c <= 0x0D) {
            // \t \n \v \f \r and space; 0x1C-0x1F are not White_Space.
            SPACE
        } else {
            OTHER
        };
        i += 1;
    }
    t
}
static ASCII: [u8; 128] = ascii_table();

/// The class (OTHER / LETTER / NUMBER / SPACE) of a code point.
#[inline]
pub fn class_of(cp: u32) -> u8 {
    if cp < 128 {
        ASCII[cp as usize]
    } else if cp < 0x10000 {
        tables().bmp[cp as usize]
    } else {
        let a = &tables().astral;
        match a.binary_search_by(|&(lo, hi, _)| {
            if hi < cp {
                std::cmp::Ordering::Less
            } else if lo > cp {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        }) {
            Ok(i) => a[i].2,
            Err(_) => OTHER,
        }
    }
}

/// Decode the character starting at byte `i` of valid UTF-8: (code point, length).
#[inline(always)]
fn decode_at(b: &[u8], i: usize) -> (u32, usize) {
    let c0 = b[i] as u32;
    if c0 < 0x80 {
        (c0, 1)
    } else if c0 < 0xE0 {
        (((c0 & 0x1F) << 6) | (b[i + 1] as u32 & 0x3F), 2)
    } else if c0 < 0xF0 {
        (((c0 & 0x0F) << 12) | ((b[i + 1] as u32 & 0x3F) << 6) | (b[i + 2] as u32 & 0x3F), 3)
    } else {
        (
            ((c0 & 0x07) << 18)
                | ((b[i + 1] as u32 & 0x3F) << 12)
                | ((b[i + 2] as u32 & 0x3F) << 6)
                | (b[i + 3] as u32 & 0x3F),
            4,
        )
    }
}

/// Class and length of the character at byte `i` (None at the end of the text).
#[inline(always)]
fn peek(b: &[u8], i: usize) -> Option<(u8, u32, usize)> {
    if i >= b.len() {
        return None;
    }
    let c0 = b[i];
    if c0 < 0x80 {
        return Some((ASCII[c0 as usize], c0 as u32, 1));
    }
    let (cp, n) = decode_at(b, i);
    Some((class_of(cp), cp, n))
}

/// End of the run of characters of class `class` starting at byte `i`.
#[inline(always)]
fn run_end(b: &[u8], mut i: usize, class: u8) -> usize {
    while i < b.len() {
        let c0 = b[i];
        if c0 < 0x80 {
            if ASCII[c0 as usize] != class {
                break;
            }
            i += 1;
        } else {
            let (cp, n) = decode_at(b, i);
            if class_of(cp) != class {
                break;
            }
            i += n;
        }
    }
    i
}

/// Length of a contraction (`'s 't 're 've 'm 'll 'd`) at byte `i`, 0 if none.
/// `fold`: case-insensitive as `(?i:...)` (simple Unicode case folding, under
/// which `s` also matches U+017F LATIN SMALL LETTER LONG S).
#[inline]
fn contraction_len(b: &[u8], i: usize, fold: bool) -> usize {
    debug_assert_eq!(b[i], b'\'');
    let norm = |j: usize| -> (u8, usize) {
        if j >= b.len() {
            return (0, 0);
        }
        let c = b[j];
        if fold {
            if c == 0xC5 && j + 1 < b.len() && b[j + 1] == 0xBF {
                return (b's', 2); // U+017F folds to 's'
            }
            (c.to_ascii_lowercase(), 1)
        } else {
            (c, 1)
        }
    };
    let (c1, n1) = norm(i + 1);
    match c1 {
        b's' | b't' | b'm' | b'd' => 1 + n1,
        b'r' | b'v' | b'l' => {
            let (c2, n2) = norm(i + 1 + n1);
            let want = match c1 {
                b'r' | b'v' => b'e',
                _ => b'l',
            };
            if c2 == want {
                1 + n1 + n2
            } else {
                0
            }
        }
        _ => 0,
    }
}

/// End of `\s+(?!\S)|\s+` starting at whitespace position `i`.
#[inline]
fn whitespace_end(b: &[u8], i: usize, first_len: usize) -> usize {
    let j = run_end(b, i + first_len, SPACE);
    if j == b.len() {
        return j;
    }
    // Followed by a non-space: `\s+(?!\S)` backs off one character (if that
    // leaves at least one); otherwise `\s+` takes the single character.
    let last = last_char_start(b, j);
    if last > i {
        last
    } else {
        j
    }
}

#[inline]
fn last_char_start(b: &[u8], j: usize) -> usize {
    let mut k = j - 1;
    while b[k] & 0xC0 == 0x80 {
        k -= 1;
    }
    k
}

/// End (byte offset) of the GPT-2 pre-token starting at `i` (< len).
#[inline]
pub fn gpt2_next(b: &[u8], i: usize) -> usize {
    let (class, cp, n) = match peek(b, i) {
        Some(x) => x,
        None => return i,
    };
    if cp == b'\'' as u32 {
        let k = contraction_len(b, i, false);
        if k > 0 {
            return i + k;
        }
    }
    match class {
        LETTER | NUMBER => run_end(b, i + n, class),
        OTHER => run_end(b, i + n, OTHER),
        _ => {
            // Whitespace. A single space joins a following letter/number/other run.
            if cp == b' ' as u32 {
                if let Some((c2, _, n2)) = peek(b, i + 1) {
                    if c2 != SPACE {
                        return run_end(b, i + 1 + n2, c2);
                    }
                }
            }
            whitespace_end(b, i, n)
        }
    }
}

#[inline]
fn is_crlf(cp: u32) -> bool {
    cp == b'\r' as u32 || cp == b'\n' as u32
}

/// End of `[\r\n]*` from `i`.
#[inline]
fn crlf_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && (b[i] == b'\r' || b[i] == b'\n') {
        i += 1;
    }
    i
}

/// End of the run of at most 3 \p{N} characters from `i`.
#[inline]
fn digits3_end(b: &[u8], mut i: usize) -> usize {
    for _ in 0..3 {
        match peek(b, i) {
            Some((NUMBER, _, n)) => i += n,
            _ => break,
        }
    }
    i
}

/// End (byte offset) of the cl100k pre-token starting at `i` (< len).
#[inline]
pub fn cl100k_next(b: &[u8], i: usize) -> usize {
    let (class, cp, n) = match peek(b, i) {
        Some(x) => x,
        None => return i,
    };
    if cp == b'\'' as u32 {
        let k = contraction_len(b, i, true);
        if k > 0 {
            return i + k;
        }
    }
    match class {
        LETTER => run_end(b, i + n, LETTER),
        NUMBER => digits3_end(b, i),
        _ => {
            let next = peek(b, i + n);
            // `[^\r\n\p{L}\p{N}]?\p{L}+`: any non-letter/number except CR/LF may prefix letters.
            if !is_crlf(cp) {
                if let Some((LETTER, _, n2)) = next {
                    return run_end(b, i + n + n2, LETTER);
                }
            }
            if class == OTHER {
                // `[^\s\p{L}\p{N}]+[\r\n]*`
                return crlf_end(b, run_end(b, i + n, OTHER));
            }
            // Whitespace.
            if cp == b' ' as u32 {
                if let Some((OTHER, _, n2)) = next {
                    return crlf_end(b, run_end(b, i + 1 + n2, OTHER));
                }
            }
            // `\s*[\r\n]+`: the whole whitespace run up to its last CR/LF.
            let j = run_end(b, i + n, SPACE);
            if let Some(p) = b[i..j].iter().rposition(|&c| c == b'\r' || c == b'\n') {
                return i + p + 1;
            }
            whitespace_end(b, i, n)
        }
    }
}

// ---------------------------------------------------------------------------
// o200k_base
//
// Its letter alternatives split letters by case: X = [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]
// ("upper-ish") and Y = [\p{Ll}\p{Lm}\p{Lo}\p{M}] ("lower-ish") overlap in Lm, Lo
// and marks, and marks (not \p{L}) may also be the optional prefix and part of a
// punctuation run. So o200k needs its own finer classes.

/// o200k classes: UP = Lu|Lt (X only), LOW = Ll (Y only), LMO = Lm|Lo (X and Y),
/// MARK = M (X and Y, and also not-a-letter for the prefix and punctuation runs).
pub const O_OTHER: u8 = 0;
pub const O_UP: u8 = 1;
pub const O_LOW: u8 = 2;
pub const O_LMO: u8 = 3;
pub const O_MARK: u8 = 4;
pub const O_NUM: u8 = 5;
pub const O_SPACE: u8 = 6;

#[inline(always)]
fn o_in_x(c: u8) -> bool {
    matches!(c, O_UP | O_LMO | O_MARK)
}
#[inline(always)]
fn o_in_y(c: u8) -> bool {
    matches!(c, O_LOW | O_LMO | O_MARK)
}

fn o200k_tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut bmp = vec![O_OTHER; 0x10000];
        let mut astral = Vec::new();
        for (pat, class) in [
            (r"[\p{Lu}\p{Lt}]", O_UP),
            (r"\p{Ll}", O_LOW),
            (r"[\p{Lm}\p{Lo}]", O_LMO),
            (r"\p{M}", O_MARK),
            (r"\p{N}", O_NUM),
            (r"\s", O_SPACE),
        ] {
            for (lo, hi) in class_ranges(pat) {
                for cp in lo..=hi.min(0xFFFF) {
                    bmp[cp as usize] = class;
                }
                if hi >= 0x10000 {
                    astral.push((lo.max(0x10000), hi, class));
                }
            }
        }
        astral.sort_unstable();
        Tables { bmp, astral }
    })
}

const fn o200k_ascii_table() -> [u8; 128] {
    let mut t = [O_OTHER; 128];
    let mut i = 0;
    while i < 128 {
        let c = i as u8;
        t[i] = if c.is_ascii_uppercase() {
            O_UP
        } else if c.is_ascii_lowercase() {
            O_LOW
        } else if c.is_ascii_digit() {
            O_NUM
        } else if c == b' ' || (c >= 0x09 && c <= 0x0D) {
            O_SPACE
        } else {
            O_OTHER
        };
        i += 1;
    }
    t
}
static O_ASCII: [u8; 128] = o200k_ascii_table();

/// The o200k class of a code point.
#[inline]
pub fn o200k_class_of(cp: u32) -> u8 {
    if cp < 128 {
        return O_ASCII[cp as usize];
    }
    let t = o200k_tables();
    if cp < 0x10000 {
        return t.bmp[cp as usize];
    }
    match t.astral.binary_search_by(|&(lo, hi, _)| {
        if hi < cp {
            std::cmp::Ordering::Less
        } else if lo > cp {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    }) {
        Ok(i) => t.astral[i].2,
        Err(_) => O_OTHER,
    }
}

#[inline(always)]
fn o_peek(b: &[u8], i: usize) -> Option<(u8, u32, usize)> {
    if i >= b.len() {
        return None;
    }
    let c0 = b[i];
    if c0 < 0x80 {
        return Some((O_ASCII[c0 as usize], c0 as u32, 1));
    }
    let (cp, n) = decode_at(b, i);
    Some((o200k_class_of(cp), cp, n))
}

/// `X*Y+` from `j`, greedy with the regex's backtracking: X* takes the whole
/// X-run; if a Y-only (lowercase) character follows, Y+ takes the Y-run from
/// there; otherwise X* gives characters back until Y+ can take one, i.e. the
/// match ends after the last Y character of the X-run. None if there is none.
#[inline]
fn o_lower_end(b: &[u8], j: usize) -> Option<usize> {
    // ASCII first (most text): there X is [A-Z] and Y is [a-z], disjoint, so
    // no backtracking; the general loop takes over at the first non-ASCII byte.
    let mut k = ascii_run_end(b, j, u8::is_ascii_uppercase);
    match b.get(k) {
        Some(c) if c.is_ascii_lowercase() => {
            let e = ascii_run_end(b, k + 1, u8::is_ascii_lowercase);
            return if b.get(e).map_or(true, |&c| c < 0x80) { Some(e) } else { Some(o_run_end(b, e, o_in_y)) };
        }
        Some(&c) if c >= 0x80 => {} // the X-run may go on; the uppercase letters so far are not Y
        _ => return None,
    }
    let mut after_last_y = None;
    loop {
        match o_peek(b, k) {
            Some((c, _, n)) if o_in_x(c) => {
                k += n;
                if o_in_y(c) {
                    after_last_y = Some(k);
                }
            }
            Some((O_LOW, _, n)) => return Some(o_run_end(b, k + n, o_in_y)),
            _ => return after_last_y,
        }
    }
}

/// `X+Y*` from `j` (both greedy; X+ then Y* never needs to backtrack).
#[inline]
fn o_upper_end(b: &[u8], j: usize) -> Option<usize> {
    let mut k = ascii_run_end(b, j, u8::is_ascii_uppercase);
    if b.get(k).map_or(false, |&c| c >= 0x80) {
        k = o_run_end(b, k, o_in_x);
    }
    if k == j {
        return None;
    }
    let e = ascii_run_end(b, k, u8::is_ascii_lowercase);
    if b.get(e).map_or(false, |&c| c >= 0x80) {
        Some(o_run_end(b, e, o_in_y))
    } else {
        Some(e)
    }
}

/// End of the run of ASCII bytes with `keep` from `i`.
#[inline(always)]
fn ascii_run_end(b: &[u8], mut i: usize, keep: impl Fn(&u8) -> bool) -> usize {
    while i < b.len() && keep(&b[i]) {
        i += 1;
    }
    i
}

#[inline(always)]
fn o_run_end(b: &[u8], mut i: usize, keep: impl Fn(u8) -> bool) -> usize {
    while let Some((c, _, n)) = o_peek(b, i) {
        if !keep(c) {
            break;
        }
        i += n;
    }
    i
}

/// End of `[\r\n/]*` from `i`.
#[inline]
fn crlf_slash_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b'\r' | b'\n' | b'/') {
        i += 1;
    }
    i
}

/// End (byte offset) of the o200k pre-token starting at `i` (< len).
#[inline]
pub fn o200k_next(b: &[u8], i: usize) -> usize {
    let (class, cp, n) = match o_peek(b, i) {
        Some(x) => x,
        None => return i,
    };
    // The two letter alternatives, in the regex's order: each first with the
    // optional `[^\r\n\p{L}\p{N}]` prefix taken, then without it.
    let prefix = matches!(class, O_OTHER | O_MARK) || (class == O_SPACE && !is_crlf(cp));
    let letters = if prefix {
        o_lower_end(b, i + n)
            .or_else(|| if class == O_MARK { o_lower_end(b, i) } else { None })
            .or_else(|| o_upper_end(b, i + n))
            .or_else(|| if class == O_MARK { o_upper_end(b, i) } else { None })
    } else if matches!(class, O_UP | O_LOW | O_LMO) {
        o_lower_end(b, i).or_else(|| o_upper_end(b, i))
    } else {
        None
    };
    if let Some(e) = letters {
        // `(?i:'s|'t|'re|'ve|'m|'ll|'d)?`
        if e < b.len() && b[e] == b'\'' {
            return e + contraction_len(b, e, true);
        }
        return e;
    }
    match class {
        O_NUM => {
            let mut e = i;
            for _ in 0..3 {
                match o_peek(b, e) {
                    Some((O_NUM, _, n)) => e += n,
                    _ => break,
                }
            }
            e
        }
        O_OTHER | O_MARK => {
            // ` ?[^\s\p{L}\p{N}]+[\r\n/]*` (a mark always starts letters above,
            // but the run may contain marks).
            crlf_slash_end(b, o_run_end(b, i + n, |c| matches!(c, O_OTHER | O_MARK)))
        }
        _ => {
            // Whitespace (letters and digits returned above).
            if cp == b' ' as u32 {
                if let Some((O_OTHER | O_MARK, _, n2)) = o_peek(b, i + 1) {
                    return crlf_slash_end(b, o_run_end(b, i + 1 + n2, |c| matches!(c, O_OTHER | O_MARK)));
                }
            }
            // `\s*[\r\n]+`: the whole whitespace run up to its last CR/LF.
            let j = run_end(b, i + n, SPACE);
            if let Some(p) = b[i..j].iter().rposition(|&c| c == b'\r' || c == b'\n') {
                return i + p + 1;
            }
            whitespace_end(b, i, n)
        }
    }
}

// ---------------------------------------------------------------------------
// Streaming: where text may be cut

/// Whether text may be cut at byte `i` without changing its pre-tokenization,
/// whatever follows: once a piece ends at `i` in the whole text, the pieces on
/// each side are the pieces of the whole (the scanners look only forward, and
/// the only look-ahead, `\s+(?!\S)`, never reaches `i` from before a
/// non-whitespace character). The rule, per pattern:
///
/// - all: before a space after a non-whitespace character (no piece takes in
///   a following space: a space only ever leads a piece or sits in a
///   whitespace run), and before ASCII whitespace after a letter or number
///   (letter, number and contraction pieces never take in whitespace);
/// - gpt2: also before ASCII whitespace after any non-whitespace character
///   (no gpt2 piece holds a non-whitespace character followed by whitespace);
/// - cl100k and o200k: also before a letter or number after CR/LF (their
///   optional letter prefix `[^\r\n\p{L}\p{N}]` excludes CR/LF, so CR/LF never
///   joins the letters or digits after it; punctuation before CR/LF is no cut,
///   as `[\r\n]*` (o200k: `[\r\n/]*`) keeps them together). o200k's finer
///   letter classes (cased letters, marks) change nothing here: every `\p{L}`
///   is in one of its letter classes, and a mark (not `\p{L}`) is never taken
///   for a letter by this rule.
///
/// Every cut is next to an ASCII byte, so it never splits a UTF-8 sequence,
/// valid or not; a neighbouring character that is not valid UTF-8 means no cut.
/// This is the one statement of the rule: the trainer's file streaming and the
/// CLI's streamed encoding (through `_core.safe_cut`) both use it.
#[inline]
pub fn is_safe_cut(b: &[u8], i: usize, pattern: Pattern) -> bool {
    if i == 0 || i >= b.len() {
        return false;
    }
    let (cur, prev) = (b[i], b[i - 1]);
    if cur == b' ' && prev > b' ' && prev < 0x7f {
        return true; // the common case, without decoding
    }
    let ascii_ws = matches!(cur, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
    if ascii_ws {
        let Some(cp) = char_before(b, i) else { return false };
        let class = class_of(cp);
        return match pattern {
            Pattern::Gpt2 => class != SPACE,
            Pattern::Cl100k | Pattern::O200k => {
                class == LETTER || class == NUMBER || (cur == b' ' && class != SPACE)
            }
        };
    }
    if matches!(pattern, Pattern::Cl100k | Pattern::O200k) && (prev == b'\n' || prev == b'\r') {
        let Some(cp) = char_at(b, i) else { return false };
        return matches!(class_of(cp), LETTER | NUMBER);
    }
    false
}

/// The code point ending at byte `i` (exclusive), if `b[..i]` ends in valid UTF-8.
fn char_before(b: &[u8], i: usize) -> Option<u32> {
    let start = (i.saturating_sub(4)..i).rev().find(|&k| b[k] & 0xC0 != 0x80)?;
    let c = std::str::from_utf8(&b[start..i]).ok()?.chars().next()?;
    Some(c as u32)
}

/// The code point starting at byte `i`, if valid UTF-8 starts there.
fn char_at(b: &[u8], i: usize) -> Option<u32> {
    let end = (i + 4).min(b.len());
    let valid = match std::str::from_utf8(&b[i..end]) {
        Ok(s) => s,
        Err(e) => std::str::from_utf8(&b[i..i + e.valid_up_to()]).ok()?,
    };
    valid.chars().next().map(|c| c as u32)
}

/// The last safe cut `p` with `lo <= p < hi` (byte offsets), or None.
pub fn last_safe_cut(b: &[u8], lo: usize, hi: usize, pattern: Pattern) -> Option<usize> {
    let lo = lo.max(1);
    let mut i = hi.min(b.len());
    while i > lo {
        i -= 1;
        if is_safe_cut(b, i, pattern) {
            return Some(i);
        }
    }
    None
}

/// Iterator over the pre-tokens of a text.
pub struct Split<'a> {
    text: &'a str,
    pos: usize,
    pattern: Pattern,
}

impl<'a> Iterator for Split<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        let b = self.text.as_bytes();
        if self.pos >= b.len() {
            return None;
        }
        let end = match self.pattern {
            Pattern::Gpt2 => gpt2_next(b, self.pos),
            Pattern::Cl100k => cl100k_next(b, self.pos),
            Pattern::O200k => o200k_next(b, self.pos),
        };
        debug_assert!(end > self.pos);
        let s = &self.text[self.pos..end];
        self.pos = end;
        Some(s)
    }
}

/// The pre-tokens of `text`, in order; they concatenate to `text`.
pub fn split<'a>(text: &'a str, pattern: Pattern) -> impl Iterator<Item = &'a str> + 'a {
    Split { text, pos: 0, pattern }
}

/// Like `split`, as the byte ranges of the pieces (used by the encoder).
#[inline]
pub fn for_each_piece(text: &str, pattern: Pattern, mut f: impl FnMut(usize, usize)) {
    let b = text.as_bytes();
    let mut i = 0;
    match pattern {
        Pattern::Gpt2 => {
            while i < b.len() {
                let e = gpt2_next(b, i);
                f(i, e);
                i = e;
            }
        }
        Pattern::Cl100k => {
            while i < b.len() {
                let e = cl100k_next(b, i);
                f(i, e);
                i = e;
            }
        }
        Pattern::O200k => {
            while i < b.len() {
                let e = o200k_next(b, i);
                f(i, e);
                i = e;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fancy_regex::Regex;

    fn by_regex(re: &Regex, text: &str) -> Vec<String> {
        re.find_iter(text).map(|m| m.unwrap().as_str().to_string()).collect()
    }

    fn check(text: &str) {
        thread_local! {
            static RES: [Regex; 3] = [
                Regex::new(GPT2_REGEX).unwrap(),
                Regex::new(CL100K_REGEX).unwrap(),
                Regex::new(O200K_REGEX).unwrap(),
            ];
        }
        for (k, pattern) in Pattern::ALL.into_iter().enumerate() {
            let want = RES.with(|r| by_regex(&r[k], text));
            let got: Vec<String> = split(text, pattern).map(|s| s.to_string()).collect();
            assert_eq!(got, want, "pattern {:?} on {:?}", pattern, text);
        }
    }

    #[test]
    fn classes() {
        assert_eq!(class_of('a' as u32), LETTER);
        assert_eq!(class_of('é' as u32), LETTER);
        assert_eq!(class_of('中' as u32), LETTER);
        assert_eq!(class_of('٣' as u32), NUMBER);
        assert_eq!(class_of('Ⅻ' as u32), NUMBER);
        assert_eq!(class_of(0x3000), SPACE);
        assert_eq!(class_of(0x85), SPACE);
        assert_eq!(class_of(0x1C), OTHER);
        assert_eq!(class_of(0x1F600), OTHER); // emoji
        assert_eq!(class_of(0x20000), LETTER); // CJK ext B
        assert_eq!(class_of(0x1D7CE), NUMBER); // mathematical bold digit zero
        assert_eq!(class_of(0x10FFFF), OTHER);
    }

    #[test]
    fn matches_fancy_regex_on_handpicked_text() {
        for t in [
            "",
            "Hello world",
            "Hello  world",
            "  leading and trailing  ",
            "a\tb\t\tc\n\nd \n e",
            "I'm, you're, they've, we'll, he'd, it's 'tis 'x",
            "I'M YOU'RE THEY'VE WE'LL HE'D IT'S",
            "it'ſ ok",
            "123 4567 89012345",
            "x=1+2;  y == 'z'\r\n\r\n  \r\n\tfoo",
            "emoji 👍🏽 family 👨‍👩‍👧 ok",
            "e\u{301}te\u{301}", // combining marks are \p{M}: other
            "\u{1}\u{2} ctrl\u{7f}",
            " a b c d ",
            "   ",
            "\n",
            " !!! ?? ...\n\n",
            "日本語のテキスト、です。",
            "Ω≈ç√∫˜µ≤≥÷",
            "\u{3000}x\u{3000}\u{3000}y\u{a0}\u{a0}z",
            "a\u{2028}\u{2029}b",
            "  \t x",
            "  1",
            "?'s",
            " 's",
            "'\n",
            "abc\r\n",
            "1234567",
            "HelloWorld camelCase ABCdef DEF's don't WE'LL",
            "ǅungla ʰa Éé \u{903}x \u{301}\u{301}a !\u{301}! a/b\n//\n",
            "http://x.y/z?a=1\r\n/\n",
            " \u{301}",
            "ABC'S abc'",
            // ASCII runs that go on in non-ASCII letters (the o200k ASCII fast path)
            "ABCé ABCÉd abcé aBÉ ÉAbc HTTPÉcole xǅy Xʰ ABʰc ab\u{301}c AB\u{301}",
        ] {
            check(t);
        }
    }

    #[test]
    fn matches_fancy_regex_on_pseudo_random_text() {
        // A small deterministic generator over a character set that exercises
        // every branch; the Python tests do the same with hypothesis.
        let alphabet: Vec<char> = "aZé中 \t\n\r\u{a0}\u{3000}'sStTrReEvVlLmMdD019٣!?.,/👍\u{200d}\u{301}\u{1}\u{17f}ǅʰÉ\u{903}\u{20dd}"
            .chars()
            .collect();
        let mut state: u64 = 0x9E3779B97F4A7C15;
        for _ in 0..3000 {
            let mut s = String::new();
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 24) as usize;
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                s.push(alphabet[(state % alphabet.len() as u64) as usize]);
            }
            check(&s);
        }
    }

    #[test]
    fn every_safe_cut_keeps_the_pieces_for_every_pattern() {
        // every kind of neighbour: letters of each case (o200k splits by case),
        // digits, punctuation, '/', CJK, combining marks, emoji, U+001C, NBSP and
        // ideographic spaces, CR/LF, tabs, contractions in either case
        let alphabet = [
            "a", "Z", "7", ".", "!", "'s", "'S", "'ll", "/", " ", "  ", "\t", "\n", "\r\n", "\r", "\u{3000}", "\u{a0}",
            "日", "本", "。", "\u{301}", "👍", "\u{1c}", "\u{b}", "x", "É", "ǅ", "ʰ", "\u{903}", "٣",
        ];
        let mut seed = 12345u64;
        for _ in 0..400 {
            let mut text = String::new();
            for _ in 0..60 {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                text.push_str(alphabet[(seed >> 33) as usize % alphabet.len()]);
            }
            let b = text.as_bytes();
            for pattern in Pattern::ALL {
                let whole: Vec<&str> = split(&text, pattern).collect();
                let mut cuts = 0;
                for i in 1..b.len() {
                    if is_safe_cut(b, i, pattern) {
                        cuts += 1;
                        let mut parts: Vec<&str> = split(&text[..i], pattern).collect();
                        parts.extend(split(&text[i..], pattern));
                        assert_eq!(parts, whole, "{pattern:?} cut at {i} of {text:?}");
                    }
                }
                assert!(cuts > 0, "{pattern:?}: no cut in {text:?}");
            }
        }
    }

    #[test]
    fn last_safe_cut_bounds() {
        let t = b"ab cd ef";
        assert_eq!(last_safe_cut(t, 0, t.len(), Pattern::O200k), Some(5));
        assert_eq!(last_safe_cut(t, 0, 5, Pattern::O200k), Some(2));
        assert_eq!(last_safe_cut(t, 3, 5, Pattern::O200k), None);
        assert_eq!(last_safe_cut(t, 0, 100, Pattern::Gpt2), Some(5));
        // o200k: a letter after a newline, not after punctuation + newline
        assert!(is_safe_cut(b"x\ny", 2, Pattern::O200k));
        assert!(!is_safe_cut(b"x\ny", 2, Pattern::Gpt2));
        assert!(is_safe_cut(b"!\ny", 2, Pattern::O200k)); // "!\n" | "y"
        assert!(!is_safe_cut(b"!\n/", 2, Pattern::O200k));
    }

    #[test]
    fn pieces_concatenate() {
        let t = "Some text, with   spaces\tand\n\nnewlines 123.";
        for p in Pattern::ALL {
            assert_eq!(split(t, p).collect::<String>(), t);
        }
    }

    #[test]
    fn names() {
        assert_eq!(Pattern::from_name("gpt2"), Some(Pattern::Gpt2));
        assert_eq!(Pattern::from_name("cl100k"), Some(Pattern::Cl100k));
        assert_eq!(Pattern::from_name("o200k"), Some(Pattern::O200k));
        assert_eq!(Pattern::from_name("nope"), None);
        for p in Pattern::ALL {
            assert_eq!(Pattern::from_regex(p.regex()), Some(p));
            assert_eq!(Pattern::from_regex(p.tiktoken_regex()), Some(p));
        }
        assert_eq!(Pattern::Cl100k.name(), "cl100k");
    }
}

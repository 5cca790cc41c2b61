//! Reading and writing vocabulary files.
//!
//! - GPT-2's `encoder.json` + `vocab.bpe` (HF names them `vocab.json` +
//!   `merges.txt`; same formats). Token strings are bytes mapped to printable
//!   characters by GPT-2's `bytes_to_unicode`; `vocab.bpe` starts with a
//!   `#version` line, then one merge `left right` per line in priority order.
//!   A vocabulary trained with another pre-tokenization pattern than GPT-2's
//!   names it on that line (`#version: 0.2 pattern: o200k`), so that loading
//!   the files encodes as training split; readers that only check the
//!   `#version` prefix (GPT-2's encoder.py, HF tokenizers) are unaffected, and
//!   GPT-2-pattern files stay byte-identical to GPT-2's.
//!   Entries of `encoder.json` that are neither a byte nor a merge's result are
//!   special tokens (GPT-2's `<|endoftext|>`), kept as literal text.
//! - tiktoken's `.tiktoken` rank files: `base64(token bytes) rank` per line.
//!
//! Every problem in a file is an `Err` naming the file (and line where there is
//! one); nothing here panics on user data.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use crate::pretokenize::Pattern;

/// A vocabulary as files describe it: regular tokens, merges in priority order,
/// special tokens.
#[derive(Debug, Default, Clone)]
pub struct VocabParts {
    pub tokens: Vec<(Vec<u8>, u32)>,
    pub merges: Vec<(u32, u32)>,
    pub specials: Vec<(String, u32)>,
    /// The pre-tokenization pattern the files name, if they name one.
    pub pattern: Option<Pattern>,
}

/// The `#version` line of a `vocab.bpe` for a vocabulary of `pattern`.
fn version_line(pattern: Pattern) -> String {
    match pattern {
        Pattern::Gpt2 => "#version: 0.2".to_string(),
        p => format!("#version: 0.2 pattern: {}", p.name()),
    }
}

/// The pattern named on a `#version` line (None: GPT-2's files name none).
fn pattern_of_version_line(line: &str, bpe_name: &str) -> Result<Option<Pattern>, VocabError> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let Some((_, name)) = line.split_once(" pattern: ") else { return Ok(None) };
    let name = name.trim();
    Pattern::from_name(name).map(Some).ok_or_else(|| {
        invalid(bpe_name, Some(1), format!("unknown pre-tokenization pattern {name:?} (known: {})", Pattern::known_names()))
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VocabError {
    /// The file does not exist.
    NotFound(String),
    /// The file exists but is malformed (or unreadable); `line` is 1-based.
    Invalid { file: String, line: Option<usize>, msg: String },
}

impl fmt::Display for VocabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VocabError::NotFound(p) => write!(f, "vocabulary file not found: {p}"),
            VocabError::Invalid { file, line: Some(l), msg } => write!(f, "{file}, line {l}: {msg}"),
            VocabError::Invalid { file, line: None, msg } => write!(f, "{file}: {msg}"),
        }
    }
}

fn invalid(file: &str, line: Option<usize>, msg: impl Into<String>) -> VocabError {
    VocabError::Invalid { file: file.to_string(), line, msg: msg.into() }
}

pub fn read_file(path: &Path) -> Result<Vec<u8>, VocabError> {
    match std::fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(VocabError::NotFound(path.display().to_string()))
        }
        Err(e) => Err(invalid(&path.display().to_string(), None, format!("cannot read: {e}"))),
    }
}

// ---------------------------------------------------------------------------
// GPT-2's byte <-> printable character mapping

/// GPT-2's `bytes_to_unicode()`: printable Latin-1 bytes map to themselves, the
/// rest to U+0100 upwards, in byte order.
pub fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable = (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap()
        } else {
            let c = char::from_u32(256 + n).unwrap();
            n += 1;
            c
        };
    }
    table
}

fn char_to_byte() -> HashMap<char, u8> {
    byte_to_char().iter().enumerate().map(|(b, &c)| (c, b as u8)).collect()
}

pub fn bytes_to_gpt2_string(b: &[u8]) -> String {
    let t = byte_to_char();
    b.iter().map(|&x| t[x as usize]).collect()
}

// ---------------------------------------------------------------------------
// encoder.json + vocab.bpe

/// A minimal parser for `encoder.json`: one flat JSON object of string keys and
/// integer values, returned in file order with each entry's line, so duplicate
/// keys (which `json.load` would silently collapse) and bad values can be
/// reported where they are.
struct JsonObj<'a> {
    s: &'a [u8],
    i: usize,
    line: usize,
}

impl<'a> JsonObj<'a> {
    fn ws(&mut self) {
        while self.i < self.s.len() {
            match self.s[self.i] {
                b'\n' => self.line += 1,
                b' ' | b'\t' | b'\r' => {}
                _ => break,
            }
            self.i += 1;
        }
    }
    fn err(&self, msg: impl Into<String>) -> (usize, String) {
        (self.line, msg.into())
    }
    fn expect(&mut self, c: u8) -> Result<(), (usize, String)> {
        self.ws();
        if self.i < self.s.len() && self.s[self.i] == c {
            self.i += 1;
            Ok(())
        } else {
            let found = self.s.get(self.i).map_or("end of file".to_string(), |&b| format!("{:?}", b as char));
            Err(self.err(format!("bad JSON: expected '{}', found {found}", c as char)))
        }
    }
    fn hex4(&mut self) -> Result<u32, (usize, String)> {
        let h = self.s.get(self.i..self.i + 4).ok_or_else(|| self.err("bad JSON: truncated \\u escape"))?;
        let v = std::str::from_utf8(h).ok().and_then(|h| u32::from_str_radix(h, 16).ok());
        self.i += 4;
        v.ok_or_else(|| self.err("bad JSON: bad \\u escape"))
    }
    fn string(&mut self) -> Result<String, (usize, String)> {
        self.expect(b'"')?;
        let mut out = String::new();
        loop {
            let start = self.i;
            while self.i < self.s.len() && self.s[self.i] != b'"' && self.s[self.i] != b'\\' && self.s[self.i] >= 0x20 {
                self.i += 1;
            }
            // the input is valid UTF-8 and we stop only at ASCII, so this slice is too
            out.push_str(std::str::from_utf8(&self.s[start..self.i]).map_err(|_| self.err("not valid UTF-8"))?);
            match self.s.get(self.i) {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.i += 1;
                    let c = *self.s.get(self.i).ok_or_else(|| self.err("bad JSON: unterminated string"))?;
                    self.i += 1;
                    match c {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let mut cp = self.hex4()?;
                            if (0xD800..0xDC00).contains(&cp) && self.s.get(self.i..self.i + 2) == Some(b"\\u") {
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.err("bad JSON: unpaired surrogate in \\u escape"));
                                }
                                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                            }
                            out.push(char::from_u32(cp).ok_or_else(|| self.err("bad JSON: unpaired surrogate in \\u escape"))?);
                        }
                        _ => return Err(self.err(format!("bad JSON: bad escape '\\{}'", c as char))),
                    }
                }
                Some(_) => return Err(self.err("bad JSON: control character in string")),
                None => return Err(self.err("bad JSON: unterminated string")),
            }
        }
    }
    /// The value as text (an integer is expected; the caller checks).
    fn value(&mut self) -> Result<String, (usize, String)> {
        self.ws();
        let start = self.i;
        if self.s.get(self.i) == Some(&b'"') {
            return Ok(format!("{:?}", self.string()?));
        }
        while self.i < self.s.len() && !matches!(self.s[self.i], b',' | b'}' | b' ' | b'\n' | b'\r' | b'\t') {
            self.i += 1;
        }
        if self.i == start {
            return Err(self.err("bad JSON: missing value"));
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }
    fn parse(text: &'a str) -> Result<Vec<(String, String, usize)>, (usize, String)> {
        let mut p = JsonObj { s: text.as_bytes(), i: 0, line: 1 };
        let mut out = Vec::new();
        p.expect(b'{')?;
        p.ws();
        if p.s.get(p.i) == Some(&b'}') {
            p.i += 1;
        } else {
            loop {
                let k = p.string()?;
                let line = p.line;
                p.expect(b':')?;
                let v = p.value()?;
                out.push((k, v, line));
                p.ws();
                match p.s.get(p.i) {
                    Some(b',') => p.i += 1,
                    Some(b'}') => {
                        p.i += 1;
                        break;
                    }
                    _ => return Err(p.err("bad JSON: expected ',' or '}'")),
                }
            }
        }
        p.ws();
        if p.i != p.s.len() {
            return Err(p.err("bad JSON: trailing data after the object"));
        }
        Ok(out)
    }
}

/// Parse `encoder.json` (`enc_name` used in messages) and `vocab.bpe`.
pub fn parse_gpt2(enc: &[u8], enc_name: &str, bpe: &[u8], bpe_name: &str) -> Result<VocabParts, VocabError> {
    let enc_text = std::str::from_utf8(enc).map_err(|e| {
        let line = enc[..e.valid_up_to()].iter().filter(|&&c| c == b'\n').count() + 1;
        invalid(enc_name, Some(line), "not valid UTF-8")
    })?;
    let entries = JsonObj::parse(enc_text).map_err(|(line, msg)| invalid(enc_name, Some(line), msg))?;
    let mut by_str: HashMap<&str, u32> = HashMap::with_capacity(entries.len());
    let mut by_id: HashMap<u32, &str> = HashMap::with_capacity(entries.len());
    for (k, v, line) in &entries {
        let id = match v.parse::<u32>() {
            Ok(x) if x < u32::MAX => x,
            _ => {
                return Err(invalid(enc_name, Some(*line), format!("token {k:?} has id {v}, not a non-negative integer")))
            }
        };
        if by_str.insert(k.as_str(), id).is_some() {
            return Err(invalid(enc_name, Some(*line), format!("duplicate token {k:?}")));
        }
        if let Some(other) = by_id.insert(id, k.as_str()) {
            return Err(invalid(enc_name, Some(*line), format!("tokens {other:?} and {k:?} share id {id}")));
        }
    }
    let b2c = byte_to_char();
    let c2b = char_to_byte();
    let mut regular: HashMap<u32, Vec<u8>> = HashMap::new();
    for (b, c) in b2c.iter().enumerate() {
        let s = c.to_string();
        match by_str.get(s.as_str()) {
            Some(&id) => {
                regular.insert(id, vec![b as u8]);
            }
            None => return Err(invalid(enc_name, None, format!("lacks the token for byte 0x{b:02x} ({s:?})"))),
        }
    }
    let bpe_text = std::str::from_utf8(bpe).map_err(|e| {
        let line = bpe[..e.valid_up_to()].iter().filter(|&&c| c == b'\n').count() + 1;
        invalid(bpe_name, Some(line), "not valid UTF-8")
    })?;
    let mut lines = bpe_text.split('\n').enumerate();
    let pattern = match lines.next() {
        Some((_, l)) if l.starts_with("#version") => pattern_of_version_line(l, bpe_name)?,
        Some((_, l)) => {
            return Err(invalid(bpe_name, Some(1), format!("expected a '#version' header line, found {:?}", trunc(l))))
        }
        None => return Err(invalid(bpe_name, Some(1), "empty file")),
    };
    let mut merges = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, raw) in lines {
        let lineno = i + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.is_empty() {
            continue;
        }
        let mut it = line.split(' ');
        let (a, b) = match (it.next(), it.next(), it.next()) {
            (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() => (a, b),
            _ => return Err(invalid(bpe_name, Some(lineno), format!("expected two symbols separated by one space, found {:?}", trunc(line)))),
        };
        let ida = *by_str.get(a).ok_or_else(|| invalid(bpe_name, Some(lineno), format!("merge names unknown symbol {a:?}")))?;
        let idb = *by_str.get(b).ok_or_else(|| invalid(bpe_name, Some(lineno), format!("merge names unknown symbol {b:?}")))?;
        let cat = format!("{a}{b}");
        let idm = *by_str.get(cat.as_str()).ok_or_else(|| {
            invalid(bpe_name, Some(lineno), format!("merge result {cat:?} is not in {enc_name}"))
        })?;
        if !seen.insert((ida, idb)) {
            return Err(invalid(bpe_name, Some(lineno), format!("merge {a:?} {b:?} is listed twice")));
        }
        let mut bytes = Vec::with_capacity(cat.len());
        for ch in cat.chars() {
            match c2b.get(&ch) {
                Some(&x) => bytes.push(x),
                None => {
                    return Err(invalid(bpe_name, Some(lineno), format!("symbol {cat:?} has a character outside GPT-2's byte alphabet: {ch:?}")))
                }
            }
        }
        regular.insert(idm, bytes);
        merges.push((ida, idb));
    }
    let mut tokens: Vec<(Vec<u8>, u32)> = regular.into_iter().map(|(id, b)| (b, id)).collect();
    tokens.sort_by_key(|t| t.1);
    // encoder.json entries that no merge makes and that are not bytes are
    // special tokens only when shaped like one: otherwise vocab.bpe is
    // truncated (or belongs to another encoder.json) and ordinary tokens
    // would silently become unencodable specials.
    for (k, v, line) in &entries {
        let id: u32 = v.parse().unwrap_or(u32::MAX);
        if !regular_has(&tokens, id) && !(k.starts_with("<|") && k.ends_with("|>") && k.len() > 4) {
            return Err(invalid(
                enc_name,
                Some(*line),
                format!("token {k:?} (id {id}) is neither a byte, the result of a merge in {bpe_name}, nor a <|...|> special token (is {bpe_name} truncated?)"),
            ));
        }
    }
    let mut specials: Vec<(String, u32)> = by_str
        .iter()
        .filter(|(_, id)| !tokens.binary_search_by_key(*id, |t| t.1).is_ok())
        .map(|(s, id)| (s.to_string(), *id))
        .collect();
    specials.sort_by_key(|s| s.1);
    Ok(VocabParts { tokens, merges, specials, pattern })
}

fn regular_has(tokens: &[(Vec<u8>, u32)], id: u32) -> bool {
    tokens.binary_search_by_key(&id, |t| t.1).is_ok()
}

fn trunc(s: &str) -> String {
    s.chars().take(60).collect()
}

/// Write `(encoder.json, vocab.bpe)` contents; `vocab.bpe` names `parts.pattern`
/// unless it is GPT-2's (or None).
pub fn write_gpt2(parts: &VocabParts) -> Result<(String, String), String> {
    let b2c = byte_to_char();
    let to_s = |b: &[u8]| -> String { b.iter().map(|&x| b2c[x as usize]).collect() };
    let mut by_id: HashMap<u32, String> = HashMap::new();
    let mut entries: Vec<(String, u32)> = Vec::new();
    for (b, id) in &parts.tokens {
        let s = to_s(b);
        by_id.insert(*id, s.clone());
        entries.push((s, *id));
    }
    for (s, id) in &parts.specials {
        entries.push((s.clone(), *id));
    }
    entries.sort_by_key(|e| e.1);
    // encoder.json readers (ours included) refuse two names for one id
    for w in entries.windows(2) {
        if w[0].1 == w[1].1 {
            return Err(format!(
                "special tokens {:?} and {:?} share id {}, which encoder.json cannot hold; save as tiktoken, or keep one name",
                w[0].0, w[1].0, w[0].1
            ));
        }
    }
    let mut enc = String::from("{");
    for (i, (s, id)) in entries.iter().enumerate() {
        if i > 0 {
            enc.push_str(", ");
        }
        enc.push_str(&serde_json::to_string(s).map_err(|e| e.to_string())?);
        enc.push_str(": ");
        enc.push_str(&id.to_string());
    }
    enc.push('}');
    let mut bpe = version_line(parts.pattern.unwrap_or(Pattern::Gpt2));
    bpe.push('\n');
    for (a, b) in &parts.merges {
        let (sa, sb) = match (by_id.get(a), by_id.get(b)) {
            (Some(x), Some(y)) => (x, y),
            _ => return Err(format!("merge ({a}, {b}) names an unknown id")),
        };
        bpe.push_str(sa);
        bpe.push(' ');
        bpe.push_str(sb);
        bpe.push('\n');
    }
    Ok((enc, bpe))
}

// ---------------------------------------------------------------------------
// .tiktoken

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn base64_encode(b: &[u8]) -> String {
    let mut out = String::with_capacity((b.len() + 2) / 3 * 4);
    for chunk in b.chunks(3) {
        let n = chunk.len();
        let v = (chunk[0] as u32) << 16 | (*chunk.get(1).unwrap_or(&0) as u32) << 8 | *chunk.get(2).unwrap_or(&0) as u32;
        for k in 0..4 {
            if k <= n {
                out.push(B64[(v >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if s.is_empty() || s.len() % 4 != 0 {
        return None;
    }
    let val = |c: u8| -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some((c - b'A') as u32),
            b'a'..=b'z' => Some((c - b'a' + 26) as u32),
            b'0'..=b'9' => Some((c - b'0' + 52) as u32),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    };
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let groups = s.len() / 4;
    for (g, q) in s.chunks(4).enumerate() {
        let pad = q.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && g + 1 != groups) {
            return None;
        }
        let mut v = 0u32;
        for &c in &q[..4 - pad] {
            v = v << 6 | val(c)?;
        }
        v <<= 6 * pad as u32;
        let bytes = [(v >> 16) as u8, (v >> 8) as u8, v as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

/// Parse a `.tiktoken` file: `(token bytes, rank)` pairs.
pub fn parse_tiktoken(data: &[u8], name: &str) -> Result<Vec<(Vec<u8>, u32)>, VocabError> {
    let text = std::str::from_utf8(data).map_err(|e| {
        let line = data[..e.valid_up_to()].iter().filter(|&&c| c == b'\n').count() + 1;
        invalid(name, Some(line), "not valid UTF-8")
    })?;
    let mut out = Vec::new();
    let mut seen_bytes: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut seen_rank: HashMap<u32, usize> = HashMap::new();
    for (i, raw) in text.split('\n').enumerate() {
        let lineno = i + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.is_empty() {
            continue;
        }
        let mut it = line.split(' ');
        let (tok, rank) = match (it.next(), it.next(), it.next()) {
            (Some(t), Some(r), None) => (t, r),
            _ => return Err(invalid(name, Some(lineno), format!("expected 'base64-token rank', found {:?}", trunc(line)))),
        };
        let bytes = base64_decode(tok).ok_or_else(|| invalid(name, Some(lineno), format!("bad base64 {:?}", trunc(tok))))?;
        let rank: u32 = rank
            .parse()
            .ok()
            .filter(|&r| r < u32::MAX)
            .ok_or_else(|| invalid(name, Some(lineno), format!("bad rank {:?}", trunc(rank))))?;
        if let Some(l) = seen_bytes.insert(bytes.clone(), lineno) {
            return Err(invalid(name, Some(lineno), format!("duplicate token (first on line {l})")));
        }
        if let Some(l) = seen_rank.insert(rank, lineno) {
            return Err(invalid(name, Some(lineno), format!("duplicate rank {rank} (first on line {l})")));
        }
        out.push((bytes, rank));
    }
    if out.is_empty() {
        return Err(invalid(name, None, "no tokens"));
    }
    Ok(out)
}

pub fn write_tiktoken(tokens: &[(Vec<u8>, u32)]) -> String {
    let mut sorted: Vec<&(Vec<u8>, u32)> = tokens.iter().collect();
    sorted.sort_by_key(|t| t.1);
    let mut out = String::new();
    for (b, r) in sorted {
        out.push_str(&base64_encode(b));
        out.push(' ');
        out.push_str(&r.to_string());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_files() -> (String, String) {
        let b2c = byte_to_char();
        let mut enc = String::from("{");
        for b in 0..256usize {
            enc.push_str(&serde_json::to_string(&b2c[b].to_string()).unwrap());
            enc.push_str(&format!(": {b}, "));
        }
        enc.push_str("\"ab\": 256, \"\u{120}a\": 257, \"<|endoftext|>\": 258}");
        (enc, "#version: 0.2\na b\n\u{120} a\n".to_string())
    }

    #[test]
    fn byte_mapping_is_gpt2s() {
        let t = byte_to_char();
        assert_eq!(t[b'!' as usize], '!');
        assert_eq!(t[b' ' as usize], '\u{120}');
        assert_eq!(t[0], '\u{100}');
        assert_eq!(t[0xAD], '\u{143}');
        assert_eq!(char_to_byte().len(), 256);
    }

    #[test]
    fn gpt2_roundtrip() {
        let (enc, bpe) = tiny_files();
        let p = parse_gpt2(enc.as_bytes(), "encoder.json", bpe.as_bytes(), "vocab.bpe").unwrap();
        assert_eq!(p.tokens.len(), 258);
        assert_eq!(p.merges, vec![(97, 98), (32, 97)]);
        assert_eq!(p.specials, vec![("<|endoftext|>".to_string(), 258)]);
        let (e2, b2) = write_gpt2(&p).unwrap();
        let q = parse_gpt2(e2.as_bytes(), "e", b2.as_bytes(), "b").unwrap();
        assert_eq!(p.tokens, q.tokens);
        assert_eq!(p.merges, q.merges);
        assert_eq!(p.specials, q.specials);
        assert_eq!(p.pattern, None);
        assert!(b2.starts_with("#version: 0.2\n"), "GPT-2-pattern files name no pattern");
    }

    #[test]
    fn gpt2_files_record_the_pattern() {
        let (enc, bpe) = tiny_files();
        let mut p = parse_gpt2(enc.as_bytes(), "encoder.json", bpe.as_bytes(), "vocab.bpe").unwrap();
        for pat in Pattern::ALL {
            p.pattern = Some(pat);
            let (e2, b2) = write_gpt2(&p).unwrap();
            let q = parse_gpt2(e2.as_bytes(), "e", b2.as_bytes(), "b").unwrap();
            assert_eq!(q.pattern, if pat == Pattern::Gpt2 { None } else { Some(pat) });
            assert_eq!(q.merges, p.merges);
        }
        let crlf = bpe.replacen("#version: 0.2\n", "#version: 0.2 pattern: cl100k\r\n", 1);
        let q = parse_gpt2(enc.as_bytes(), "e", crlf.as_bytes(), "b").unwrap();
        assert_eq!(q.pattern, Some(Pattern::Cl100k));
        let bad = bpe.replacen("#version: 0.2\n", "#version: 0.2 pattern: nope\n", 1);
        let e = parse_gpt2(enc.as_bytes(), "encoder.json", bad.as_bytes(), "vocab.bpe").unwrap_err().to_string();
        assert!(e.contains("vocab.bpe, line 1: unknown pre-tokenization pattern \"nope\""), "{e}");
    }

    #[test]
    fn gpt2_errors_name_file_and_line() {
        let (enc, bpe) = tiny_files();
        let err = |e: &str, b: &str| parse_gpt2(e.as_bytes(), "encoder.json", b.as_bytes(), "vocab.bpe").unwrap_err().to_string();
        assert!(err("{\"a\": 1,,}", &bpe).contains("bad JSON"));
        assert!(err(&enc, "a b\n").contains("line 1: expected a '#version'"));
        assert!(err(&enc, "#version: 0.2\na b\nzz q\n").contains("vocab.bpe, line 3: merge names unknown symbol \"zz\""));
        assert!(err(&enc, "#version: 0.2\na b c\n").contains("line 2"));
        assert!(err(&enc, "#version: 0.2\nb a\n").contains("merge result \"ba\""));
        let dup = enc.replacen("\"ab\": 256", "\"ab\": 256, \"ab\": 259", 1);
        assert!(err(&dup, &bpe).contains("duplicate token \"ab\""));
        let dup_id = enc.replacen("\"ab\": 256", "\"ab\": 255", 1);
        assert!(err(&dup_id, &bpe).contains("share id 255"));
        let neg = enc.replacen("\"ab\": 256", "\"ab\": -3", 1);
        assert!(err(&neg, &bpe).contains("not a non-negative integer"));
        let truncated = err(&enc, "#version: 0.2\na b\n");
        assert!(truncated.contains("token \"\u{120}a\" (id 257) is neither a byte"), "{truncated}");
        assert!(truncated.contains("encoder.json, line 1"), "{truncated}");
        let e = parse_gpt2(b"{\"a\xff\": 1}", "encoder.json", bpe.as_bytes(), "vocab.bpe").unwrap_err();
        assert!(e.to_string().contains("not valid UTF-8"));
    }

    #[test]
    fn base64() {
        for s in [&b""[..], b"a", b"ab", b"abc", b"abcd", b"\xff\x00\x10"] {
            if s.is_empty() {
                continue;
            }
            assert_eq!(base64_decode(&base64_encode(s)).unwrap(), s);
        }
        assert_eq!(base64_encode(b"hello"), "aGVsbG8=");
        assert!(base64_decode("a=bc").is_none());
        assert!(base64_decode("abc").is_none());
        assert!(base64_decode("ab!c").is_none());
    }

    #[test]
    fn tiktoken_roundtrip_and_errors() {
        let toks = vec![(b"a".to_vec(), 0), (b"b".to_vec(), 1), (b"ab".to_vec(), 2)];
        let s = write_tiktoken(&toks);
        assert_eq!(parse_tiktoken(s.as_bytes(), "x").unwrap(), toks);
        let e = parse_tiktoken(b"YQ== 0\nYQ== 1\n", "x.tiktoken").unwrap_err().to_string();
        assert!(e.contains("x.tiktoken, line 2: duplicate token"), "{e}");
        let e = parse_tiktoken(b"YQ== 0\nYg== zero\n", "x.tiktoken").unwrap_err().to_string();
        assert!(e.contains("line 2: bad rank"), "{e}");
        let e = parse_tiktoken(b"YQ== 0\nYg== 0\n", "x.tiktoken").unwrap_err().to_string();
        assert!(e.contains("duplicate rank 0"), "{e}");
    }
}

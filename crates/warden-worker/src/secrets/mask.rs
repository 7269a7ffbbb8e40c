//! Masking secrets in logs, as the bytes stream in.
//!
//! Every granted secret's value is searched for in the raw form, in base64 (standard and
//! URL-safe alphabets, at each of the three alignments a value can have inside a longer
//! base64 text) and percent-encoded (upper- and lower-case hex, `+` for space); each
//! occurrence is stored as `[MASKED:NAME]`. A match can straddle any number of writes: bytes
//! that may still begin one are held back until enough follow (at most the longest form less
//! one byte) or the stream ends, so a job printing its secret one byte per write is masked
//! like one printing it whole. Nothing is ever flushed early: a prefix of a secret is a leak.

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine;

/// Secrets shorter than this are refused at start: masking them would mask ordinary text.
pub const MIN_SECRET_LEN: usize = 6;

/// The forms of every secret of one job, compiled once.
pub struct MaskSet {
    ac: AhoCorasick,
    /// `[MASKED:NAME]` for each pattern.
    replacements: Vec<Vec<u8>>,
    longest: usize,
}

/// The forms a value may take in a log.
fn forms(value: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![value.to_vec()];
    for engine in [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::URL_SAFE,
    ] {
        for shift in 0..3usize {
            let mut shifted = vec![0u8; shift];
            shifted.extend_from_slice(value);
            let text = engine.encode(&shifted);
            // Only the characters made of the value's bits alone (not the zero prefix, nor a
            // partial last group that depends on what follows the value).
            let first = (shift * 8).div_ceil(6);
            let last = ((shift + value.len()) * 8) / 6;
            if last > first && last - first >= MIN_SECRET_LEN {
                out.push(text.as_bytes()[first..last].to_vec());
            }
        }
        // The whole value encoded on its own, with its padding.
        out.push(engine.encode(value).into_bytes());
    }
    for upper in [true, false] {
        let mut enc = Vec::new();
        let mut plus = Vec::new();
        for &b in value {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                enc.push(b);
                plus.push(b);
            } else {
                let hex = if upper {
                    format!("%{b:02X}")
                } else {
                    format!("%{b:02x}")
                };
                enc.extend_from_slice(hex.as_bytes());
                if b == b' ' {
                    plus.push(b'+');
                } else {
                    plus.extend_from_slice(hex.as_bytes());
                }
            }
        }
        out.push(enc);
        out.push(plus);
    }
    out.sort();
    out.dedup();
    out
}

impl MaskSet {
    /// `None` when there is nothing to mask.
    pub fn new(secrets: &[(&str, &[u8])]) -> Option<MaskSet> {
        let mut patterns = Vec::new();
        let mut replacements = Vec::new();
        for (name, value) in secrets {
            if value.is_empty() {
                continue;
            }
            for form in forms(value) {
                patterns.push(form);
                replacements.push(format!("[MASKED:{name}]").into_bytes());
            }
        }
        if patterns.is_empty() {
            return None;
        }
        let longest = patterns.iter().map(Vec::len).max().unwrap_or(1);
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)
            .ok()?;
        Some(MaskSet {
            ac,
            replacements,
            longest,
        })
    }

    /// Masks a whole text at once (tests, and what is held back at the end of a stream).
    pub fn mask_all(&self, text: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len());
        let mut pos = 0;
        for m in self.ac.find_iter(text) {
            out.extend_from_slice(&text[pos..m.start()]);
            out.extend_from_slice(&self.replacements[m.pattern().as_usize()]);
            pos = m.end();
        }
        out.extend_from_slice(&text[pos..]);
        out
    }
}

/// The masking state of one stream.
pub struct Masker<'a> {
    set: &'a MaskSet,
    pending: Vec<u8>,
}

impl<'a> Masker<'a> {
    pub fn new(set: &'a MaskSet) -> Masker<'a> {
        Masker {
            set,
            pending: Vec::new(),
        }
    }

    /// Takes new bytes; returns what can be written now, masked.
    pub fn push(&mut self, data: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(data);
        // A match starting before `settled` is whole in `pending` whatever comes next, and at
        // its longest: every form is at most `longest` bytes.
        let settled = self.pending.len().saturating_sub(self.set.longest - 1);
        let mut out = Vec::with_capacity(self.pending.len());
        let mut pos = 0;
        for m in self.set.ac.find_iter(&self.pending) {
            if m.start() >= settled {
                break;
            }
            out.extend_from_slice(&self.pending[pos..m.start()]);
            out.extend_from_slice(&self.set.replacements[m.pattern().as_usize()]);
            pos = m.end();
        }
        // No match starts in pos..settled (find_iter would have yielded it), so those bytes
        // are plain text.
        let upto = pos.max(settled);
        out.extend_from_slice(&self.pending[pos..upto]);
        self.pending.drain(..upto);
        out
    }

    /// The stream has ended: everything held back, masked.
    pub fn finish(&mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.pending);
        self.set.mask_all(&rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"hunter2-Sup3r s3cret/+=?&";

    fn set() -> MaskSet {
        MaskSet::new(&[("API_KEY", SECRET), ("OTHER", b"0ther-secret")]).unwrap()
    }

    fn stream(set: &MaskSet, writes: &[&[u8]]) -> Vec<u8> {
        let mut m = Masker::new(set);
        let mut out = Vec::new();
        for w in writes {
            out.extend(m.push(w));
        }
        out.extend(m.finish());
        out
    }

    fn b64(engine: base64::engine::GeneralPurpose, v: &[u8]) -> String {
        engine.encode(v)
    }

    #[test]
    fn ten_ways_of_printing_a_secret_are_all_masked() {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
        let s = std::str::from_utf8(SECRET).unwrap();
        let enc: String = percent(SECRET, true);
        let texts = [
            format!("token={s}\n"),
            format!("{s}{s}"),
            b64(STANDARD, SECRET),
            b64(URL_SAFE, SECRET),
            b64(URL_SAFE_NO_PAD, SECRET),
            format!("basic {}", b64(STANDARD, format!("user:{s}").as_bytes())),
            format!("x{}", b64(STANDARD, format!("ab{s}cd").as_bytes())),
            format!("url?q={enc}"),
            format!("url?q={}", percent(SECRET, false)),
            format!("form={}", enc.replace("%20", "+")),
        ];
        for t in &texts {
            let masked = set().mask_all(t.as_bytes());
            let text = String::from_utf8_lossy(&masked);
            assert!(text.contains("[MASKED:API_KEY]"), "{t:?} -> {text}");
            assert!(!text.contains("hunter2"), "{t:?} -> {text}");
            for form in forms(SECRET) {
                assert!(
                    !masked.windows(form.len()).any(|w| w == form.as_slice()),
                    "{t:?} still holds a form"
                );
            }
        }
    }

    fn percent(v: &[u8], upper: bool) -> String {
        v.iter()
            .map(|&b| {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                    (b as char).to_string()
                } else if upper {
                    format!("%{b:02X}")
                } else {
                    format!("%{b:02x}")
                }
            })
            .collect()
    }

    #[test]
    fn a_secret_split_across_any_writes_is_masked() {
        let text = [
            b"before " as &[u8],
            SECRET,
            b" middle ",
            b"0ther-secret",
            b" after",
        ]
        .concat();
        let whole = set().mask_all(&text);
        assert_eq!(
            String::from_utf8_lossy(&whole),
            "before [MASKED:API_KEY] middle [MASKED:OTHER] after"
        );
        // One byte per write, and every split point into two writes.
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(stream(&set(), &bytes), whole);
        for cut in 0..text.len() {
            assert_eq!(
                stream(&set(), &[&text[..cut], &text[cut..]]),
                whole,
                "cut {cut}"
            );
        }
    }

    #[test]
    fn plain_output_passes_unchanged_and_is_held_back_at_most_the_longest_form() {
        let set = set();
        let mut m = Masker::new(&set);
        let line = vec![b'x'; 10_000];
        let out = m.push(&line);
        assert_eq!(out.len(), 10_000 - (set.longest - 1));
        let mut all = out;
        all.extend(m.finish());
        assert_eq!(all, line);
        assert!(MaskSet::new(&[]).is_none());
    }

    /// A small deterministic generator (xorshift): the same cases on every run.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn streaming_equals_masking_whole_for_random_texts_and_splits() {
        use base64::engine::general_purpose::STANDARD;
        let set = set();
        let pieces: Vec<Vec<u8>> = vec![
            SECRET.to_vec(),
            b"0ther-secret".to_vec(),
            STANDARD.encode(SECRET).into_bytes(),
            b"hunter2".to_vec(),
            b"%2F".to_vec(),
            b"\n".to_vec(),
            vec![0xff, 0x00, 0xc3],
            b"Sup3r s3cret".to_vec(),
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..2_000 {
            let mut text = Vec::new();
            for _ in 0..rng.below(12) {
                if rng.below(3) == 0 {
                    text.extend_from_slice(&pieces[rng.below(pieces.len())]);
                } else {
                    text.extend((0..rng.below(20)).map(|_| b' ' + rng.below(95) as u8));
                }
            }
            let mut chunks = Vec::new();
            let mut at = 0;
            while at < text.len() {
                let n = 1 + rng.below(text.len() - at);
                chunks.push(&text[at..at + n]);
                at += n;
            }
            assert_eq!(stream(&set, &chunks), set.mask_all(&text), "{text:?}");
        }
    }

    #[test]
    fn a_large_log_with_secrets_near_every_boundary_is_masked_whole() {
        // 8 MiB of text in 64 KiB reads with the secret straddling every read boundary.
        let set = set();
        let mut text = Vec::new();
        let mut expected = Vec::new();
        while text.len() < 8 << 20 {
            let pad = 65_536 - (text.len() % 65_536) - 5;
            text.extend(std::iter::repeat_n(b'.', pad));
            expected.extend(std::iter::repeat_n(b'.', pad));
            text.extend_from_slice(SECRET);
            expected.extend_from_slice(b"[MASKED:API_KEY]");
        }
        let chunks: Vec<&[u8]> = text.chunks(65_536).collect();
        assert_eq!(stream(&set, &chunks), expected);
    }
}

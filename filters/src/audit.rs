//! The audit trail's hash chain: each line carries the hash of the line before it, so editing,
//! removing or reordering any line breaks every hash after it, and `portcullis audit verify`
//! finds the first break.
//!
//! A line is `{"seq":N,"prev":"<hex>","hash":"<hex>","record":{...}}` where
//! `hash = sha256(prev "\n" seq "\n" record)` over the record's exact bytes as written, and
//! `prev` is the previous line's hash (64 zeros for the first line).

use crate::auth::sha256;
use serde::Deserialize;
use serde_json::value::RawValue;

/// `prev` of the first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hash that seals line `seq` whose predecessor's hash is `prev`.
pub fn chain_hash(prev: &str, seq: u64, record: &str) -> String {
    let mut input = Vec::with_capacity(prev.len() + record.len() + 24);
    input.extend_from_slice(prev.as_bytes());
    input.push(b'\n');
    input.extend_from_slice(seq.to_string().as_bytes());
    input.push(b'\n');
    input.extend_from_slice(record.as_bytes());
    hex::encode(sha256(&input))
}

/// The line that appends `record` (a JSON object, written as given) after a line with hash
/// `prev` and number `seq - 1`. No trailing newline.
pub fn seal(prev: &str, seq: u64, record: &str) -> String {
    let hash = chain_hash(prev, seq, record);
    format!(r#"{{"seq":{seq},"prev":"{prev}","hash":"{hash}","record":{record}}}"#)
}

/// Where a chain continues: the last line's number and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tip {
    pub seq: u64,
    pub hash: String,
}

impl Tip {
    pub fn genesis() -> Tip {
        Tip { seq: 0, hash: GENESIS.to_string() }
    }
}

#[derive(Deserialize)]
struct Line<'a> {
    seq: u64,
    prev: String,
    hash: String,
    #[serde(borrow)]
    record: &'a RawValue,
}

/// The first break in a chain: the 1-based line number and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    pub line: usize,
    pub reason: String,
}

/// Reads one line's place in the chain, without checking it against its predecessor.
pub fn tip_of(line: &str) -> Option<Tip> {
    let l: Line<'_> = serde_json::from_str(line).ok()?;
    Some(Tip { seq: l.seq, hash: l.hash })
}

/// Walks a whole trail; the tip of an intact chain, or its first break.
pub fn verify<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<Tip, Break> {
    let mut tip = Tip::genesis();
    for (i, text) in lines.into_iter().enumerate() {
        let n = i + 1;
        let broken = |reason: String| Break { line: n, reason };
        let l: Line<'_> = serde_json::from_str(text).map_err(|e| broken(format!("not an audit line ({e})")))?;
        if l.seq != tip.seq + 1 {
            return Err(broken(format!("sequence {} follows {}: a line is missing or out of order", l.seq, tip.seq)));
        }
        if l.prev != tip.hash {
            return Err(broken(
                "`prev` is not the previous line's hash: a line before it was changed or removed".into(),
            ));
        }
        if chain_hash(&l.prev, l.seq, l.record.get()) != l.hash {
            return Err(broken("the hash does not match the line: it was changed".into()));
        }
        tip = Tip { seq: l.seq, hash: l.hash };
    }
    Ok(tip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trail(n: u64) -> Vec<String> {
        let mut tip = Tip::genesis();
        (1..=n)
            .map(|seq| {
                let line = seal(&tip.hash, seq, &format!(r#"{{"event":"auth_failed","n":{seq}}}"#));
                tip = tip_of(&line).unwrap();
                line
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies() {
        let lines = trail(5);
        let tip = verify(lines.iter().map(String::as_str)).unwrap();
        assert_eq!(tip.seq, 5);
        assert_eq!(verify(std::iter::empty()).unwrap(), Tip::genesis());
    }

    #[test]
    fn every_kind_of_tampering_is_found_at_its_line() {
        let lines = trail(5);
        let check = |l: Vec<String>| verify(l.iter().map(String::as_str)).unwrap_err();
        let mut edited = lines.clone();
        edited[2] = edited[2].replace(r#""n":3"#, r#""n":4"#);
        assert_eq!(check(edited).line, 3);
        let mut removed = lines.clone();
        removed.remove(1);
        assert_eq!(check(removed).line, 2);
        let mut swapped = lines.clone();
        swapped.swap(3, 4);
        assert_eq!(check(swapped).line, 4);
        // Re-sealing an edited line does not help: the next line's `prev` no longer matches.
        let mut resealed = lines.clone();
        resealed[1] = seal(&tip_of(&lines[0]).unwrap().hash, 2, r#"{"event":"forged"}"#);
        assert_eq!(check(resealed).line, 3);
        let mut garbage = lines;
        garbage[0] = "not json".into();
        assert!(check(garbage).reason.contains("not an audit line"));
    }
}

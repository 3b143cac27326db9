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

/// Checks a trail line by line, so a long file is walked without holding it in memory.
pub struct Chain {
    tip: Tip,
    lines: usize,
}

impl Default for Chain {
    fn default() -> Self {
        Chain { tip: Tip::genesis(), lines: 0 }
    }
}

impl Chain {
    /// Checks the next line against the chain so far.
    pub fn push(&mut self, text: &str) -> Result<(), Break> {
        self.lines += 1;
        let broken = |reason: String| Break { line: self.lines, reason };
        let l: Line<'_> = serde_json::from_str(text).map_err(|e| broken(format!("not an audit line ({e})")))?;
        if l.seq != self.tip.seq + 1 {
            return Err(broken(format!(
                "sequence {} follows {}: a line is missing or out of order",
                l.seq, self.tip.seq
            )));
        }
        if l.prev != self.tip.hash {
            return Err(broken(
                "`prev` is not the previous line's hash: a line before it was changed or removed".into(),
            ));
        }
        if chain_hash(&l.prev, l.seq, l.record.get()) != l.hash {
            return Err(broken("the hash does not match the line: it was changed".into()));
        }
        self.tip = Tip { seq: l.seq, hash: l.hash };
        Ok(())
    }

    /// The tip of the chain checked so far.
    pub fn tip(self) -> Tip {
        self.tip
    }
}

/// Walks a whole trail; the tip of an intact chain, or its first break.
pub fn verify<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<Tip, Break> {
    let mut chain = Chain::default();
    for text in lines {
        chain.push(text)?;
    }
    Ok(chain.tip())
}

/// One trail line read for display. `sealed` says whether the line's hash matches its own
/// content; whether it links to its predecessor is what [`verify`] checks over the whole trail.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Entry {
    pub seq: u64,
    pub hash: String,
    pub prev: String,
    pub sealed: bool,
    pub record: serde_json::Value,
}

/// Reads one line for display; `None` when it is not an audit line at all.
pub fn read_entry(line: &str) -> Option<Entry> {
    let l: Line<'_> = serde_json::from_str(line).ok()?;
    let sealed = chain_hash(&l.prev, l.seq, l.record.get()) == l.hash;
    let record = serde_json::from_str(l.record.get()).ok()?;
    Some(Entry { seq: l.seq, hash: l.hash, prev: l.prev, sealed, record })
}

/// Which records a trail browser wants: `event` equal, and `principal` equal to the record's
/// `principal` (who made the request) or `actor` (who made the admin change). Unset matches all.
#[derive(Debug, Clone, Default)]
pub struct RecordFilter {
    pub event: Option<String>,
    pub principal: Option<String>,
}

impl RecordFilter {
    pub fn matches(&self, record: &serde_json::Value) -> bool {
        let field = |k: &str| record.get(k).and_then(|v| v.as_str());
        self.event.as_deref().is_none_or(|e| field("event") == Some(e))
            && self.principal.as_deref().is_none_or(|p| field("principal") == Some(p) || field("actor") == Some(p))
    }
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

    #[test]
    fn entries_are_read_for_display_and_a_changed_line_shows_unsealed() {
        let lines = trail(2);
        let e = read_entry(&lines[1]).unwrap();
        assert_eq!((e.seq, e.sealed), (2, true));
        assert_eq!(e.prev, read_entry(&lines[0]).unwrap().hash);
        assert_eq!(e.record["event"], "auth_failed");
        let changed = read_entry(&lines[1].replace(r#""n":2"#, r#""n":9"#)).unwrap();
        assert!(!changed.sealed);
        assert_eq!(read_entry("not json"), None);
        assert_eq!(read_entry(r#"{"seq":1}"#), None);
    }

    #[test]
    fn a_filter_matches_event_and_principal_or_actor() {
        let denied = serde_json::json!({"event": "access_denied", "principal": "ci"});
        let change = serde_json::json!({"event": "key_created", "actor": "corp:alice"});
        let all = RecordFilter::default();
        assert!(all.matches(&denied) && all.matches(&change));
        let by_event = RecordFilter { event: Some("access_denied".into()), principal: None };
        assert!(by_event.matches(&denied) && !by_event.matches(&change));
        let by_who = RecordFilter { event: None, principal: Some("corp:alice".into()) };
        assert!(!by_who.matches(&denied) && by_who.matches(&change));
        let both = RecordFilter { event: Some("key_created".into()), principal: Some("ci".into()) };
        assert!(!both.matches(&denied) && !both.matches(&change));
    }
}

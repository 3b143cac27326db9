//! The audit trail file: security decisions (refused credentials, denied access, exceeded limits)
//! and admin changes (stored keys created or revoked), appended as a hash chain
//! (`filters::audit`) that `portcullis audit verify` checks.
//!
//! Every append takes an exclusive lock on the file and continues from its last line, so
//! several gateway processes and a CLI command writing at once still produce one chain.

use filters::audit::{self, Break, Tip};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Appends in flight at once; past this new records are dropped (and counted) rather than
/// letting a burst of refused requests queue unbounded disk writes.
const MAX_IN_FLIGHT: usize = 64;

/// How far back from the end of the file the last line is looked for.
const TAIL_CHUNK: u64 = 64 * 1024;

/// The gateway's handle on the audit trail. Appends run on tokio's blocking pool (there is no
/// writer thread of its own, which would not survive Pingora daemonising with a fork).
pub struct AuditLog {
    path: Option<Arc<PathBuf>>,
    in_flight: Arc<AtomicUsize>,
    dropped: AtomicU64,
}

impl AuditLog {
    /// No trail configured: records are discarded.
    pub fn disabled() -> Self {
        AuditLog { path: None, in_flight: Arc::new(AtomicUsize::new(0)), dropped: AtomicU64::new(0) }
    }

    /// Appends to `path`. Checks first that the file can be opened, so a bad path stops start-up
    /// instead of losing the trail silently.
    pub fn open(path: PathBuf) -> io::Result<Self> {
        drop(open_for_append(&path)?);
        Ok(AuditLog { path: Some(Arc::new(path)), ..AuditLog::disabled() })
    }

    /// Appends one record (a JSON object) without making the caller wait for the disk.
    pub fn record(&self, record: &serde_json::Value) {
        let Some(path) = &self.path else { return };
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                log::error!("audit trail: {n} records dropped (the disk is not keeping up)");
            }
            return;
        }
        let (path, in_flight, record) = (path.clone(), self.in_flight.clone(), record.to_string());
        let write = move || {
            if let Err(e) = append(&path, &record) {
                log::error!("audit trail {}: could not append a record: {e}", path.display());
            }
            in_flight.fetch_sub(1, Ordering::AcqRel);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(write)),
            Err(_) => write(),
        }
    }
}

fn open_for_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).append(true).create(true).open(path)
}

/// Appends one record to the trail at `path`, continuing its chain; returns the new tip.
pub fn append(path: &Path, record: &str) -> io::Result<Tip> {
    let mut file = open_for_append(path)?;
    file.lock()?;
    let result = (|| {
        let tip = last_tip(&mut file)?;
        let line = audit::seal(&tip.hash, tip.seq + 1, record);
        file.write_all(format!("{line}\n").as_bytes())?;
        file.sync_data()?;
        Ok(Tip { seq: tip.seq + 1, hash: audit::chain_hash(&tip.hash, tip.seq + 1, record) })
    })();
    let _ = file.unlock();
    result
}

/// The chain position of the file's last line (genesis for an empty file).
fn last_tip(file: &mut File) -> io::Result<Tip> {
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok(Tip::genesis());
    }
    let start = len.saturating_sub(TAIL_CHUNK);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = String::new();
    file.take(TAIL_CHUNK).read_to_string(&mut tail)?;
    let last = tail.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
    audit::tip_of(last).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, "the last line is not an audit line; run `portcullis audit verify`")
    })
}

/// Walks the whole trail at `path`, a line at a time.
pub fn verify_file(path: &Path) -> io::Result<Result<Tip, Break>> {
    let mut chain = audit::Chain::default();
    for line in BufReader::new(File::open(path)?).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        if let Err(b) = chain.push(&line) {
            return Ok(Err(b));
        }
    }
    Ok(Ok(chain.tip()))
}

/// Bytes one [`read_back`] call reads at most, so a filter that matches little cannot make one
/// request read a whole large trail; the page then ends early with a cursor to go on from.
const SCAN_LIMIT: u64 = 8 * 1024 * 1024;
/// Longer lines are not audit records the gateway wrote; they are counted as unreadable.
const MAX_LINE: usize = 1024 * 1024;
const READ_CHUNK: u64 = 64 * 1024;

/// Records read back from the end of a trail, newest first.
#[derive(Debug, Default)]
pub struct Page {
    pub entries: Vec<audit::Entry>,
    /// Where the next (older) page starts: pass it as `before`. `None` at the start of the file.
    pub next_cursor: Option<u64>,
    /// Lines in the scanned range that are not audit lines (a damaged or edited trail).
    pub unreadable: usize,
}

/// Up to `limit` records that `filter` matches, newest first, from the lines that end at byte
/// `before` (a cursor from an earlier page; `None`: the end of the file) backwards. Reads under a
/// shared lock, so it never sees half an append.
pub fn read_back(path: &Path, before: Option<u64>, limit: usize, filter: &audit::RecordFilter) -> io::Result<Page> {
    let mut file = File::open(path)?;
    file.lock_shared()?;
    let result = read_back_locked(&mut file, before, limit, filter, Scan { chunk: READ_CHUNK, limit: SCAN_LIMIT });
    let _ = file.unlock();
    result
}

/// How a [`read_back`] reads: bytes per read, bytes per call.
#[derive(Clone, Copy)]
struct Scan {
    chunk: u64,
    limit: u64,
}

fn read_back_locked(
    file: &mut File,
    before: Option<u64>,
    limit: usize,
    filter: &audit::RecordFilter,
    scan: Scan,
) -> io::Result<Page> {
    let len = file.metadata()?.len();
    let end = before.unwrap_or(len);
    if end > len {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "the cursor is past the end of the trail"));
    }
    let mut page = Page::default();
    // Unread bytes are [0, pos); `carry` holds the bytes from `pos` up to the next newline (the
    // end of a line that starts further back); `skipping` drops an overlong line's remainder.
    let (mut pos, mut carry, mut skipping) = (end, Vec::<u8>::new(), false);
    let mut oldest = end;
    while pos > 0 {
        // Past the scan limit, stop once a line has been read (so every page makes progress),
        // or inside an overlong line (the next page goes on from where this one stopped).
        if end - pos >= scan.limit && (oldest < end || skipping) {
            break;
        }
        let start = pos.saturating_sub(scan.chunk);
        let mut chunk = vec![0u8; (pos - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&carry);
        let mut line_end = chunk.len();
        // Lines that end inside this buffer, newest first; the first piece may begin earlier.
        while let Some(nl) = chunk[..line_end].iter().rposition(|&b| b == b'\n') {
            let line = &chunk[nl + 1..line_end];
            let line_start = start + nl as u64 + 1;
            line_end = nl;
            if std::mem::take(&mut skipping) {
                page.unreadable += 1;
                oldest = line_start;
                continue;
            }
            if !line.iter().all(u8::is_ascii_whitespace) {
                oldest = line_start;
                if take_line(&mut page, line, filter) && page.entries.len() >= limit {
                    page.next_cursor = Some(line_start).filter(|&s| s > 0);
                    return Ok(page);
                }
            }
        }
        carry = chunk[..line_end].to_vec();
        if carry.len() > MAX_LINE {
            carry.clear();
            skipping = true;
        }
        pos = start;
    }
    if pos == 0 {
        // The first line of the file has no newline before it.
        if skipping {
            page.unreadable += 1;
        } else if !carry.iter().all(u8::is_ascii_whitespace) {
            take_line(&mut page, &carry, filter);
        }
        page.next_cursor = None;
    } else {
        // Stopped inside an overlong line: the next page starts there, and counts its rest once
        // more as unreadable.
        page.next_cursor = Some(if skipping { pos } else { oldest });
    }
    Ok(page)
}

/// Adds `line` to the page if it is an audit line that `filter` matches; whether it was added.
fn take_line(page: &mut Page, line: &[u8], filter: &audit::RecordFilter) -> bool {
    match std::str::from_utf8(line).ok().and_then(|l| audit::read_entry(l.trim())) {
        Some(e) if filter.matches(&e.record) => {
            page.entries.push(e);
            true
        }
        Some(_) => false,
        None => {
            page.unreadable += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty trail in a directory of its own: (directory, trail path).
    fn fresh_trail(name: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("portcullis-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        let _ = std::fs::remove_file(&path);
        (dir, path)
    }

    #[test]
    fn appends_continue_the_chain_across_handles() {
        let (dir, path) = fresh_trail("audit");
        for i in 0..3 {
            append(&path, &format!(r#"{{"event":"test","i":{i}}}"#)).unwrap();
        }
        let tip = verify_file(&path).unwrap().unwrap();
        assert_eq!(tip.seq, 3);
        // A writer that starts later picks the chain up where it ends.
        assert_eq!(append(&path, r#"{"event":"later"}"#).unwrap().seq, 4);
        assert_eq!(verify_file(&path).unwrap().unwrap().seq, 4);
        let text = std::fs::read_to_string(&path).unwrap().replace(r#""i":1"#, r#""i":7"#);
        std::fs::write(&path, text).unwrap();
        assert_eq!(verify_file(&path).unwrap().unwrap_err().line, 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn page_through(path: &Path, limit: usize, filter: &audit::RecordFilter, scan: Scan) -> (Vec<u64>, usize) {
        let (mut seqs, mut unreadable, mut before) = (Vec::new(), 0, None);
        loop {
            let mut file = File::open(path).unwrap();
            let page = read_back_locked(&mut file, before, limit, filter, scan).unwrap();
            assert!(page.entries.len() <= limit);
            seqs.extend(page.entries.iter().map(|e| e.seq));
            unreadable += page.unreadable;
            match page.next_cursor {
                Some(c) => before = Some(c),
                None => return (seqs, unreadable),
            }
        }
    }

    #[test]
    fn records_read_back_newest_first_in_pages_across_chunk_boundaries() {
        let (dir, path) = fresh_trail("audit-back");
        for i in 1..=10 {
            let event = if i % 3 == 0 { "key_created" } else { "auth_failed" };
            append(&path, &format!(r#"{{"event":"{event}","principal":"p{}","i":{i}}}"#, i % 2)).unwrap();
        }
        let all = audit::RecordFilter::default();
        let newest_first: Vec<u64> = (1..=10).rev().collect();
        for scan in [
            Scan { chunk: 7, limit: 1 << 20 },
            Scan { chunk: 64 * 1024, limit: 1 << 20 },
            Scan { chunk: 50, limit: 60 },
        ] {
            for limit in [1, 3, 10, 50] {
                assert_eq!(page_through(&path, limit, &all, scan), (newest_first.clone(), 0), "{limit}");
            }
        }
        let created = audit::RecordFilter { event: Some("key_created".into()), principal: None };
        assert_eq!(page_through(&path, 2, &created, Scan { chunk: 7, limit: 1 << 20 }).0, vec![9, 6, 3]);
        let p1 = audit::RecordFilter { event: None, principal: Some("p1".into()) };
        assert_eq!(page_through(&path, 50, &p1, Scan { chunk: 64, limit: 100 }).0, vec![9, 7, 5, 3, 1]);
        // A damaged line is counted, not fatal; one over the line cap too.
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        lines[4] = "garbage".into();
        lines[6] = "x".repeat(MAX_LINE + 10);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let (seqs, unreadable) = page_through(&path, 4, &all, Scan { chunk: 4096, limit: 1 << 22 });
        assert_eq!((seqs, unreadable), (vec![10, 9, 8, 6, 4, 3, 2, 1], 2));
        // With a scan limit far below the overlong line, pages stop inside it and go on from there.
        let (seqs, unreadable) = page_through(&path, 4, &all, Scan { chunk: 4096, limit: 8192 });
        assert_eq!(seqs, vec![10, 9, 8, 6, 4, 3, 2, 1]);
        assert!(unreadable >= 2, "{unreadable}");
        let mut file = File::open(&path).unwrap();
        let len = file.metadata().unwrap().len();
        assert!(read_back_locked(&mut file, Some(len + 1), 5, &all, Scan { chunk: 64, limit: 64 }).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

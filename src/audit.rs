//! The audit trail file: security decisions (refused credentials, denied access, exceeded limits)
//! and admin changes (stored keys created or revoked), appended as a hash chain
//! (`filters::audit`) that `portcullis audit verify` checks.
//!
//! Every append takes an exclusive lock on the file and continues from its last line, so
//! several gateway processes and a CLI command writing at once still produce one chain.

use filters::audit::{self, Break, Tip};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
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

/// Walks the whole trail at `path`.
pub fn verify_file(path: &Path) -> io::Result<Result<Tip, Break>> {
    let text = std::fs::read_to_string(path)?;
    Ok(audit::verify(text.lines().filter(|l| !l.trim().is_empty())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_continue_the_chain_across_handles() {
        let dir = std::env::temp_dir().join(format!("portcullis-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        let _ = std::fs::remove_file(&path);
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
}

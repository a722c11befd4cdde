//! The usage journal: an append-only file that makes a usage record safe from a crash of
//! this process before the ledger has committed it. A response on SQLite waits for one
//! `write` of its record here instead of a ledger commit (seven pages, and two thread
//! hops); the usage writer commits the records behind it in batches.
//!
//! A record written here survives kill -9 as a commit of the ledger does: both are in
//! the kernel's page cache, and neither survives an OS crash (SQLite runs with
//! `synchronous = NORMAL`). At start the records left in the journal are written to the
//! ledger again; the ledger skips request ids it already holds, so a record committed
//! before the crash is not charged twice.
//!
//! Two files take turns: records are appended to the active one; once it is past
//! `ROTATE_BYTES` and the other one is empty, they swap, and the full one is emptied as
//! soon as every record in it is committed. No file grows past `MAX_FILE_BYTES`: a
//! record that would take it further is not journaled (its response waits for the
//! commit). An exclusive lock on the first file keeps a second process off the same
//! ledger.
//!
//! A frame is the payload's length (u32, little-endian), its CRC-32 (u32, little-endian)
//! and the payload, a JSON object. Reading stops at the first frame that is cut short or
//! fails its check: the tail of a write that a crash interrupted.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::billing::Credits;
use crate::store::{AccountId, KeyId, UsageDetail, UsageRecord};

/// Size past which the active file hands over to the other one.
const ROTATE_BYTES: u64 = 4 * 1024 * 1024;
/// The most a file ever holds. A file passes `ROTATE_BYTES` only while the other still
/// holds records the ledger has not committed, and at most `MAX_BACKLOG` (10,000)
/// records of about 300 bytes wait, so this is reached only if the writer is stuck.
const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;
/// Room the journal's volume must have at start-up ([`Journal::probe`]).
const PROBE_BYTES: usize = 64 * 1024;
/// Frame header: length and CRC-32.
const HEADER: usize = 8;
/// Largest payload accepted when reading: a longer length is a torn or foreign frame.
const MAX_PAYLOAD: usize = 1 << 20;

/// One record as written (the money in integer nano-units, as in the ledger).
#[derive(Serialize, Deserialize)]
struct Entry {
    request_id: String,
    account_id: i64,
    key_id: i64,
    model: String,
    endpoint: String,
    input_tokens: i64,
    cached_input_tokens: i64,
    output_tokens: i64,
    cost_nanos: i64,
    status: i64,
    latency_ms: i64,
    created_at: i64,
    // Absent in records a version before them wrote: they read as the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    requested_model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    provider: Option<String>,
    #[serde(default = "one")]
    attempts: i64,
    #[serde(default)]
    estimated: bool,
    #[serde(default)]
    loss_nanos: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lease: Option<String>,
}

fn one() -> i64 {
    1
}

impl From<&UsageRecord> for Entry {
    fn from(r: &UsageRecord) -> Entry {
        Entry {
            request_id: r.request_id.clone(),
            account_id: r.account_id.0,
            key_id: r.key_id.0,
            model: r.model.clone(),
            endpoint: r.endpoint.clone(),
            input_tokens: r.input_tokens,
            cached_input_tokens: r.cached_input_tokens,
            output_tokens: r.output_tokens,
            cost_nanos: r.cost.nanos(),
            status: r.status,
            latency_ms: r.latency_ms,
            created_at: r.created_at,
            requested_model: r.detail.requested_model.clone(),
            provider: r.detail.provider.clone(),
            attempts: r.detail.attempts,
            estimated: r.detail.estimated,
            loss_nanos: r.detail.loss.nanos(),
            lease: r.detail.lease.clone(),
        }
    }
}

impl From<Entry> for UsageRecord {
    fn from(e: Entry) -> UsageRecord {
        UsageRecord {
            request_id: e.request_id,
            account_id: AccountId(e.account_id),
            key_id: KeyId(e.key_id),
            model: e.model,
            endpoint: e.endpoint,
            input_tokens: e.input_tokens,
            cached_input_tokens: e.cached_input_tokens,
            output_tokens: e.output_tokens,
            cost: Credits::from_nanos(e.cost_nanos),
            status: e.status,
            latency_ms: e.latency_ms,
            created_at: e.created_at,
            detail: UsageDetail {
                requested_model: e.requested_model,
                provider: e.provider,
                attempts: e.attempts,
                estimated: e.estimated,
                loss: Credits::from_nanos(e.loss_nanos),
                lease: e.lease,
            },
        }
    }
}

/// One record encoded as a frame, ready to append.
pub struct Frame(pub(super) Vec<u8>);

impl Frame {
    /// Encodes a record.
    pub fn of(record: &UsageRecord) -> Frame {
        let mut bytes = vec![0; HEADER];
        // Serializing plain strings and integers into a Vec cannot fail.
        serde_json::to_writer(&mut bytes, &Entry::from(record))
            .unwrap_or_else(|e| unreachable!("usage record as JSON: {e}"));
        let payload = &bytes[HEADER..];
        let len = payload.len() as u32;
        let crc = crc32fast::hash(payload);
        bytes[..4].copy_from_slice(&len.to_le_bytes());
        bytes[4..HEADER].copy_from_slice(&crc.to_le_bytes());
        Frame(bytes)
    }
}

struct Files {
    files: [File; 2],
    /// The file records are appended to.
    active: usize,
    /// Per file: bytes written, records written, records the writer has settled.
    bytes: [u64; 2],
    written: [u64; 2],
    settled: [u64; 2],
    /// A failed write could not be cut off: appending behind it would be unreadable,
    /// until the file is emptied.
    broken: bool,
}

/// The journal of one ledger; see the module's documentation.
pub struct Journal {
    paths: [PathBuf; 2],
    files: Mutex<Files>,
}

impl Journal {
    /// The journal's files for the ledger at `ledger`: `<ledger>-usage-0` and `-usage-1`.
    pub fn paths(ledger: &Path) -> [PathBuf; 2] {
        let name = |n: u8| {
            let mut path = ledger.as_os_str().to_owned();
            path.push(format!("-usage-{n}"));
            PathBuf::from(path)
        };
        [name(0), name(1)]
    }

    /// Opens (creating if missing) the journal of the ledger at `ledger`, locks it, and
    /// returns it with the records it still holds. Those records may or may not be in
    /// the ledger: write them again, then [`Journal::clear`] it.
    pub fn open(ledger: &Path) -> std::io::Result<(Journal, Vec<UsageRecord>)> {
        let paths = Journal::paths(ledger);
        let open = |path: &Path| {
            OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .open(path)
        };
        let files = [open(&paths[0])?, open(&paths[1])?];
        match files[0].try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(std::io::Error::other(format!(
                    "{} is locked by another process: is another tollgate serving this database?",
                    paths[0].display()
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        let mut left = Vec::new();
        for (file, path) in files.iter().zip(&paths) {
            let mut bytes = Vec::new();
            (&*file).read_to_end(&mut bytes)?;
            let (records, clean) = decode(&bytes);
            if !clean {
                tracing::warn!(
                    file = %path.display(),
                    "the usage journal ends in a cut-short record (a write interrupted by a crash); it was never answered"
                );
            }
            left.extend(records);
        }
        let bytes = [files[0].metadata()?.len(), files[1].metadata()?.len()];
        Ok((
            Journal {
                paths,
                files: Mutex::new(Files {
                    files,
                    active: 0,
                    bytes,
                    written: [0; 2],
                    settled: [0; 2],
                    broken: false,
                }),
            },
            left,
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Files> {
        // Every update under this lock leaves the counters consistent with the files.
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Empties both files (every record in them is in the ledger).
    pub fn clear(&self) -> std::io::Result<()> {
        let mut f = self.lock();
        for i in 0..2 {
            f.files[i].set_len(0)?;
            f.bytes[i] = 0;
            f.written[i] = 0;
            f.settled[i] = 0;
        }
        f.active = 0;
        Ok(())
    }

    /// Appends a frame in one `write`, then, still holding the journal, calls `then`
    /// with the number of the file it went to (to hand to [`Journal::settled`] once the
    /// record is committed).
    pub fn append<T>(&self, frame: &Frame, then: impl FnOnce(usize) -> T) -> std::io::Result<T> {
        let mut f = self.lock();
        if f.broken {
            return Err(std::io::Error::other("the usage journal failed earlier"));
        }
        let active = f.active;
        if f.bytes[active] + frame.0.len() as u64 > MAX_FILE_BYTES {
            return Err(std::io::Error::other(format!(
                "{} is at its bound of {MAX_FILE_BYTES} bytes",
                self.paths[active].display()
            )));
        }
        if let Err(e) = (&f.files[active]).write_all(&frame.0) {
            // A short write may have left part of a frame, and reading stops at a broken
            // frame: cut it off, or stop using the journal.
            let good = f.bytes[active];
            if f.files[active].set_len(good).is_err() {
                f.broken = true;
            }
            return Err(e);
        }
        f.bytes[active] += frame.0.len() as u64;
        f.written[active] += 1;
        Ok(then(active))
    }

    /// The writer has committed (or given up on) `counts[i]` more records of file `i`.
    /// Empties a file whose records are all settled and lets the files swap.
    pub fn settled(&self, counts: [u64; 2]) -> std::io::Result<()> {
        let mut f = self.lock();
        for (settled, count) in f.settled.iter_mut().zip(counts) {
            *settled += count;
        }
        let other = 1 - f.active;
        let active = f.active;
        if f.broken && f.settled[active] == f.written[active] && f.files[active].set_len(0).is_ok()
        {
            // The torn tail goes with the records before it, all committed.
            f.bytes[active] = 0;
            f.written[active] = 0;
            f.settled[active] = 0;
            f.broken = false;
        }
        if f.bytes[other] > 0 && f.settled[other] == f.written[other] {
            f.files[other].set_len(0)?;
            f.bytes[other] = 0;
            f.written[other] = 0;
            f.settled[other] = 0;
        }
        if f.bytes[f.active] >= ROTATE_BYTES && f.bytes[other] == 0 {
            f.active = other;
        }
        Ok(())
    }

    /// Checks that the journal's volume has room: writes `PROBE_BYTES` to the empty
    /// active file and cuts them off again. On a full disk this fails with the system's
    /// "No space left on device", so the server stops at start with that error instead of
    /// serving requests it cannot record.
    pub fn probe(&self) -> std::io::Result<()> {
        let f = self.lock();
        let file = &f.files[f.active];
        let written = (&*file).write_all(&[0; PROBE_BYTES]);
        file.set_len(f.bytes[f.active])?;
        written
    }

    /// Bytes in the two files (for tests).
    pub fn sizes(&self) -> [u64; 2] {
        self.lock().bytes
    }

    /// The files' paths.
    pub fn file_paths(&self) -> &[PathBuf; 2] {
        &self.paths
    }
}

/// The records of a file's bytes, and whether the bytes ended on a whole frame.
fn decode(mut bytes: &[u8]) -> (Vec<UsageRecord>, bool) {
    let mut records = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < HEADER {
            return (records, false);
        }
        let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        if len > MAX_PAYLOAD || bytes.len() < HEADER + len {
            return (records, false);
        }
        let payload = &bytes[HEADER..HEADER + len];
        if crc32fast::hash(payload) != crc {
            return (records, false);
        }
        match serde_json::from_slice::<Entry>(payload) {
            Ok(entry) => records.push(entry.into()),
            Err(_) => return (records, false),
        }
        bytes = &bytes[HEADER + len..];
    }
    (records, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_record as record;

    #[test]
    fn records_come_back_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().expect("dir");
        let ledger = dir.path().join("t.db");
        let records: Vec<_> = (0..3)
            .map(|i| record(&format!("r{i}"), AccountId(1), KeyId(2), 1_000 + i))
            .collect();
        {
            let (journal, left) = Journal::open(&ledger).expect("open");
            assert!(left.is_empty());
            for r in &records {
                assert_eq!(
                    journal.append(&Frame::of(r), |file| file).expect("append"),
                    0
                );
            }
        }
        // A crash in the middle of a fourth write: half a frame at the end.
        let torn = Frame::of(&record("r3", AccountId(1), KeyId(2), 7));
        let mut file = OpenOptions::new()
            .append(true)
            .open(&Journal::paths(&ledger)[0])
            .expect("file");
        file.write_all(&torn.0[..torn.0.len() / 2]).expect("write");
        drop(file);
        let (journal, left) = Journal::open(&ledger).expect("reopen");
        assert_eq!(left, records);
        journal.clear().expect("clear");
        drop(journal);
        let (_journal, left) = Journal::open(&ledger).expect("reopen");
        assert!(left.is_empty());
    }

    #[test]
    fn a_corrupt_frame_ends_the_journal() {
        let a = Frame::of(&record("a", AccountId(1), KeyId(2), 5));
        let b = Frame::of(&record("b", AccountId(1), KeyId(2), 6));
        let mut bytes = [a.0.clone(), b.0.clone()].concat();
        let (records, clean) = decode(&bytes);
        assert_eq!((records.len(), clean), (2, true));
        // One bit of b's payload flipped: its check fails and reading stops before it.
        let last = bytes.len() - 2;
        bytes[last] ^= 1;
        let (records, clean) = decode(&bytes);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].request_id, "a");
        assert!(!clean);
    }

    #[test]
    fn a_second_process_cannot_open_a_locked_journal() {
        let dir = tempfile::tempdir().expect("dir");
        let ledger = dir.path().join("t.db");
        let (_journal, _) = Journal::open(&ledger).expect("open");
        // Another open file description stands in for another process (flock is per
        // open file, not per process).
        let err = Journal::open(&ledger).err().expect("locked");
        assert!(err.to_string().contains("another tollgate"), "{err}");
    }

    #[test]
    fn files_swap_and_empty_once_their_records_are_settled() {
        let dir = tempfile::tempdir().expect("dir");
        let ledger = dir.path().join("t.db");
        let (journal, _) = Journal::open(&ledger).expect("open");
        let frame = Frame::of(&record("x", AccountId(1), KeyId(2), 5));
        let per_file = ROTATE_BYTES / frame.0.len() as u64 + 1;
        for _ in 0..per_file {
            assert_eq!(journal.append(&frame, |file| file).expect("append"), 0);
        }
        // Nothing settled yet, but the other file is empty: they swap.
        journal.settled([0, 0]).expect("settled");
        assert_eq!(journal.append(&frame, |file| file).expect("append"), 1);
        // File 0 still holds records that are not committed: it keeps them.
        journal.settled([per_file - 1, 0]).expect("settled");
        assert!(journal.sizes()[0] > 0);
        // The last one committed: file 0 is emptied.
        journal.settled([1, 0]).expect("settled");
        assert_eq!(journal.sizes()[0], 0);
        assert_eq!(
            std::fs::metadata(&journal.file_paths()[0])
                .expect("meta")
                .len(),
            0
        );
        // File 1 stays active until it is full.
        assert_eq!(journal.append(&frame, |file| file).expect("append"), 1);
    }
}

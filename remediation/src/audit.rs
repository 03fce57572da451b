//! The audit log: an append-only, hash-chained record of every remediation decision.
//!
//! # Format
//!
//! One file, `<dir>/audit.jsonl`: one [`AuditRecord`] per line as compact JSON, in the exact
//! form `serde_json` writes it, each line ending in `\n`. Records are numbered from `seq` 0
//! without gaps; each carries the hash of the record before it in `prev_hash` (64 zeros for
//! the first, [`GENESIS_HASH`]) and its own hash in `hash`.
//!
//! # Hash encoding
//!
//! `hash` is the lowercase hex SHA-256 of a length-prefixed encoding of every other field, in
//! this order (see [`record_hash`]):
//!
//! ```text
//! "fleetmind-audit-v1\n"                       domain tag, 19 bytes
//! seq                                          u64, 8 bytes big-endian
//! ts                                           i64, 8 bytes big-endian
//! actor, event                                 str
//! action_id, policy, policy_version            opt
//! detail, prev_hash                            str
//!
//! str = byte length as u64 big-endian, then the UTF-8 bytes
//! opt = 0x00 for none; 0x01 then str for some
//! ```
//!
//! Every field has a fixed width or a length prefix, so no two different records encode to
//! the same bytes.
//!
//! # Guarantees
//!
//! [`verify_file`] detects a changed byte anywhere (the line no longer parses, its hash no
//! longer matches its contents, or it is no longer in the form the log writes), a removed,
//! duplicated or reordered record (a `seq` gap or a `prev_hash` that does not match), a removed
//! head (the first record is not `seq` 0 with a zero `prev_hash`), and trailing garbage.
//!
//! It does **not** by itself detect that records were removed from the *end*: a shortened log
//! is still a valid chain. An operator who notes the tip hash elsewhere (a ticket, another
//! host) and passes it back as the expected tip detects that too. Nor does it stop someone
//! who can write the file from rewriting the whole chain from some record on; only a tip kept
//! elsewhere catches that.
//!
//! # Writing
//!
//! [`AuditLog`] is the single writer: it takes an exclusive advisory lock on the file, opens it
//! with `O_APPEND`, verifies the chain to find its tip, and fsyncs every appended record
//! before returning it. A last line without its newline (a crash mid-write, never acknowledged)
//! is cut off with a warning when the log is opened; any other damage refuses the open.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use fleetmind_schema::{AuditRecord, TimestampMs};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The log's file name inside its directory.
pub const AUDIT_FILE: &str = "audit.jsonl";

/// The `prev_hash` of the first record: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Domain tag hashed before the fields; the version changes if the encoding ever does.
const DOMAIN_TAG: &[u8] = b"fleetmind-audit-v1\n";

/// What the caller records; [`AuditLog::append`] adds `seq`, `prev_hash` and `hash`.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    /// When it happened.
    pub ts: TimestampMs,
    /// Who: `policy:<name>`, `user:<name>`, `executor`, ...
    pub actor: String,
    /// What happened: `decision`, `approve`, `execute`, ...
    pub event: String,
    /// The action concerned, if any.
    pub action_id: Option<String>,
    /// The policy that decided, if any.
    pub policy: Option<String>,
    /// That policy's version (content hash).
    pub policy_version: Option<String>,
    /// Inputs (incident snapshot) and outcome.
    pub detail: Value,
}

/// The hex SHA-256 of `record`'s fields other than `hash`, in the encoding the module
/// documentation describes.
pub fn record_hash(record: &AuditRecord) -> String {
    let mut hasher = Sha256::new();
    hasher.update(DOMAIN_TAG);
    hasher.update(record.seq.to_be_bytes());
    hasher.update(record.ts.to_be_bytes());
    put_str(&mut hasher, &record.actor);
    put_str(&mut hasher, &record.event);
    put_opt(&mut hasher, record.action_id.as_deref());
    put_opt(&mut hasher, record.policy.as_deref());
    put_opt(&mut hasher, record.policy_version.as_deref());
    put_str(&mut hasher, &record.detail);
    put_str(&mut hasher, &record.prev_hash);
    to_hex(&hasher.finalize())
}

fn put_str(hasher: &mut Sha256, s: &str) {
    hasher.update((s.len() as u64).to_be_bytes());
    hasher.update(s.as_bytes());
}

fn put_opt(hasher: &mut Sha256, s: Option<&str>) {
    match s {
        None => hasher.update([0]),
        Some(s) => {
            hasher.update([1]);
            put_str(hasher, s);
        }
    }
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// What is wrong with one line of the log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChainProblem {
    /// A line with nothing on it.
    #[error("empty line")]
    EmptyLine,
    /// The line is not an audit record as JSON.
    #[error("not a valid audit record: {0}")]
    Unparsable(serde_json::Error),
    /// The stored hash is not the hash of the record's fields.
    #[error("record seq {seq}: hash does not match its contents (changed after it was written)")]
    HashMismatch {
        /// The record's `seq` as stored.
        seq: u64,
    },
    /// The record hashes correctly but its bytes are not what the log writes for it.
    #[error(
        "record seq {seq}: not in the exact form the log writes (changed after it was written)"
    )]
    NotCanonical {
        /// The record's `seq`.
        seq: u64,
    },
    /// The first record is not `seq` 0.
    #[error("record seq {seq} is the first record, not seq 0 (the head of the log was removed)")]
    HeadMissing {
        /// The first record's `seq`.
        seq: u64,
    },
    /// A record with the wrong `seq` for its place.
    #[error(
        "record seq {seq} where seq {expected} belongs (a record was removed, duplicated or reordered)"
    )]
    OutOfSequence {
        /// The record's `seq`.
        seq: u64,
        /// The `seq` this place needs.
        expected: u64,
    },
    /// `prev_hash` is not the previous record's hash (or zeros for the first).
    #[error(
        "record seq {seq}: prev_hash does not match the hash of the record before it (a record was removed, changed or reordered)"
    )]
    BrokenLink {
        /// The record's `seq`.
        seq: u64,
    },
    /// The file does not end in a newline.
    #[error("the last line has no newline (a torn write or trailing garbage)")]
    IncompleteLastLine,
}

impl ChainProblem {
    /// Whether this is a record whose contents were changed, as opposed to a line that does
    /// not parse or a record out of place.
    pub fn is_changed_record(&self) -> bool {
        matches!(self, Self::HashMismatch { .. } | Self::NotCanonical { .. })
    }
}

/// Why a log does not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// There is no file at the path.
    #[error("{} does not exist", path.display())]
    Missing {
        /// The path.
        path: PathBuf,
    },
    /// The file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The path.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// A line breaks the chain.
    #[error("{}: line {line}: {problem}", path.display())]
    Broken {
        /// The path.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong with it.
        problem: ChainProblem,
    },
    /// The chain is intact but ends somewhere other than the tip the caller expected.
    #[error("{}: the log ends at {actual} ({records} records), not at the expected tip {expected}: {why}", path.display())]
    TipMismatch {
        /// The path.
        path: PathBuf,
        /// The tip the caller expected.
        expected: String,
        /// The log's tip.
        actual: String,
        /// Records in the log.
        records: u64,
        /// What that means.
        why: String,
    },
    /// The expected tip is not a hex SHA-256.
    #[error("expected tip {0:?} is not a SHA-256 in hex (64 hex digits)")]
    BadTip(String),
}

/// A verified log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records in the log.
    pub records: u64,
    /// The last record's hash ([`GENESIS_HASH`] for an empty log).
    pub tip_hash: String,
}

/// Verifies the log at `path` from its first byte to its last; with `expected_tip`, also that
/// the log ends at that hash (detects records removed from the end).
pub fn verify_file(path: &Path, expected_tip: Option<&str>) -> Result<VerifyReport, VerifyError> {
    let expected_tip = expected_tip.map(parse_tip).transpose()?;
    let file = File::open(path).map_err(|source| read_error(path, source))?;
    let scan = scan(&file, path, expected_tip.as_deref())?;
    if let Some(line) = scan.torn_line {
        return Err(VerifyError::Broken {
            path: path.to_owned(),
            line,
            problem: ChainProblem::IncompleteLastLine,
        });
    }
    let chain = scan.chain;
    if let Some(expected) = expected_tip
        && expected != chain.tip
    {
        let why = match chain.expected_seen_at {
            Some(seq) => format!(
                "the expected tip is record seq {seq}; the {} records after it were not there when the tip was noted",
                chain.records - seq - 1
            ),
            None => "no record of this log has that hash: records were removed from the end, \
                     or the tip belongs to another log"
                .to_owned(),
        };
        return Err(VerifyError::TipMismatch {
            path: path.to_owned(),
            expected,
            actual: chain.tip,
            records: chain.records,
            why,
        });
    }
    Ok(VerifyReport {
        records: chain.records,
        tip_hash: chain.tip,
    })
}

fn parse_tip(tip: &str) -> Result<String, VerifyError> {
    let tip = tip.trim();
    if tip.len() == 64 && tip.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(tip.to_ascii_lowercase())
    } else {
        Err(VerifyError::BadTip(tip.to_owned()))
    }
}

fn read_error(path: &Path, source: io::Error) -> VerifyError {
    if source.kind() == io::ErrorKind::NotFound {
        VerifyError::Missing {
            path: path.to_owned(),
        }
    } else {
        VerifyError::Read {
            path: path.to_owned(),
            source,
        }
    }
}

/// The chain as verified so far.
#[derive(Debug)]
struct Chain {
    /// Records verified; the next record's `seq`.
    records: u64,
    /// Hash of the last verified record.
    tip: String,
    /// A hash to look out for, and the `seq` of the record that had it.
    watch: Option<String>,
    expected_seen_at: Option<u64>,
}

impl Chain {
    fn new(watch: Option<&str>) -> Self {
        Self {
            records: 0,
            tip: GENESIS_HASH.to_owned(),
            watch: watch.map(str::to_owned),
            expected_seen_at: None,
        }
    }

    /// Checks the next line (without its newline) and moves the tip on.
    fn check(&mut self, line: &[u8]) -> Result<(), ChainProblem> {
        if line.is_empty() {
            return Err(ChainProblem::EmptyLine);
        }
        let record: AuditRecord = serde_json::from_slice(line).map_err(ChainProblem::Unparsable)?;
        let seq = record.seq;
        if record_hash(&record) != record.hash {
            return Err(ChainProblem::HashMismatch { seq });
        }
        // serde_json accepts forms it never writes (`\u0041` for `A`, upper-case hex in
        // escapes): a changed byte must not hide behind one.
        if serde_json::to_vec(&record).ok().as_deref() != Some(line) {
            return Err(ChainProblem::NotCanonical { seq });
        }
        if self.records == 0 && seq != 0 {
            return Err(ChainProblem::HeadMissing { seq });
        }
        if seq != self.records {
            return Err(ChainProblem::OutOfSequence {
                seq,
                expected: self.records,
            });
        }
        if record.prev_hash != self.tip {
            return Err(ChainProblem::BrokenLink { seq });
        }
        if self.watch.as_deref() == Some(record.hash.as_str()) {
            self.expected_seen_at = Some(seq);
        }
        self.records += 1;
        self.tip = record.hash;
        Ok(())
    }
}

/// The result of reading a log from the start.
#[derive(Debug)]
struct Scan {
    chain: Chain,
    /// Bytes up to the end of the last complete line.
    complete_len: u64,
    /// The number of a last line without a newline, if there is one.
    torn_line: Option<u64>,
}

fn scan(file: &File, path: &Path, watch: Option<&str>) -> Result<Scan, VerifyError> {
    let mut reader = BufReader::new(file);
    let mut chain = Chain::new(watch);
    let mut buf = Vec::new();
    let mut complete_len = 0u64;
    let mut line = 0u64;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|source| read_error(path, source))?;
        if n == 0 {
            return Ok(Scan {
                chain,
                complete_len,
                torn_line: None,
            });
        }
        line += 1;
        let Some(content) = buf.strip_suffix(b"\n") else {
            return Ok(Scan {
                chain,
                complete_len,
                torn_line: Some(line),
            });
        };
        chain
            .check(content)
            .map_err(|problem| VerifyError::Broken {
                path: path.to_owned(),
                line,
                problem,
            })?;
        complete_len += n as u64;
    }
}

/// Why the audit log cannot be opened or appended to.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The directory could not be created.
    #[error("cannot create the audit log directory {}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// The file could not be opened, locked, read or repaired.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// Another process holds the log open for writing.
    #[error("{} is locked by another writer (an audit log has exactly one)", path.display())]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// The existing chain does not verify.
    #[error("refusing to append to an audit log that does not verify: {0}")]
    Corrupt(VerifyError),
    /// A record could not be written and synced; the log is as it was before.
    #[error("cannot append to {}; the record was not written", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// An earlier failed write could not be undone, so the end of the file is unknown.
    #[error("{}: an earlier write failed and could not be undone; reopen the log", path.display())]
    Poisoned {
        /// The file.
        path: PathBuf,
    },
}

/// The open audit log: the one writer of `<dir>/audit.jsonl`.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: File,
    /// Bytes in the file, all complete verified lines.
    len: u64,
    /// Records in the file; the next record's `seq`.
    records: u64,
    /// The last record's hash.
    tip: String,
    /// A failed write left bytes that could not be removed.
    poisoned: bool,
}

impl AuditLog {
    /// Opens (creating if needed) `<dir>/audit.jsonl`, locks it, verifies the chain and finds
    /// its tip. A torn last line is cut off with a warning; any other damage is an error that
    /// names the line.
    pub fn open(dir: &Path) -> Result<Self, AuditError> {
        fs::create_dir_all(dir).map_err(|source| AuditError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(AUDIT_FILE);
        let io_error = |action, source| AuditError::Io {
            action,
            path: path.clone(),
            source,
        };
        let existed = fs::symlink_metadata(&path).is_ok();
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|source| io_error("open", source))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(AuditError::Locked { path }),
            Err(TryLockError::Error(source)) => return Err(io_error("lock", source)),
        }
        if !existed {
            // The new file's directory entry must be as durable as the records in it.
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| io_error("sync the directory of", source))?;
        }
        let scan = scan(&file, &path, None).map_err(|e| match e {
            VerifyError::Read { path, source } => AuditError::Io {
                action: "read",
                path,
                source,
            },
            other => AuditError::Corrupt(other),
        })?;
        if let Some(line) = scan.torn_line {
            tracing::warn!(
                path = %path.display(),
                line,
                "the audit log's last line is incomplete (a write cut short); removing it"
            );
            file.set_len(scan.complete_len)
                .and_then(|()| file.sync_all())
                .map_err(|source| io_error("cut the torn last line of", source))?;
        }
        Ok(Self {
            path,
            file,
            len: scan.complete_len,
            records: scan.chain.records,
            tip: scan.chain.tip,
            poisoned: false,
        })
    }

    /// Appends `entry` as the next record, fsyncs it, and returns the record as written.
    pub fn append(&mut self, entry: AuditEntry) -> Result<AuditRecord, AuditError> {
        if self.poisoned {
            return Err(AuditError::Poisoned {
                path: self.path.clone(),
            });
        }
        let mut record = AuditRecord {
            seq: self.records,
            ts: entry.ts,
            actor: entry.actor,
            event: entry.event,
            action_id: entry.action_id,
            policy: entry.policy,
            policy_version: entry.policy_version,
            detail: entry.detail.to_string(),
            prev_hash: self.tip.clone(),
            hash: String::new(),
        };
        record.hash = record_hash(&record);
        let mut line = serde_json::to_vec(&record)
            .expect("a record of strings and integers always serializes");
        line.push(b'\n');
        if let Err(source) = self
            .file
            .write_all(&line)
            .and_then(|()| self.file.sync_data())
        {
            // Take back whatever part reached the file, so the next record starts a line.
            if self
                .file
                .set_len(self.len)
                .and_then(|()| self.file.sync_data())
                .is_err()
            {
                self.poisoned = true;
            }
            return Err(AuditError::Write {
                path: self.path.clone(),
                source,
            });
        }
        self.len += line.len() as u64;
        self.records += 1;
        self.tip.clone_from(&record.hash);
        Ok(record)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records in the log.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The last record's hash ([`GENESIS_HASH`] when empty).
    pub fn tip_hash(&self) -> &str {
        &self.tip
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(i: i64) -> AuditEntry {
        AuditEntry {
            ts: 1_700_000_000_000 + i,
            actor: if i % 2 == 0 {
                "policy:cpu-steal".to_owned()
            } else {
                // A control character: serde_json writes it as `\u001f`, which has a
                // case-flipped twin that parses to the same string.
                "user:al\u{1f}ice".to_owned()
            },
            event: ["decision", "approve", "execute"][(i % 3) as usize].to_owned(),
            action_id: (i % 3 != 0).then(|| format!("act-{i}")),
            policy: Some("cpu-steal".to_owned()),
            policy_version: (i % 2 == 0).then(|| "9f86d081884c7d65".to_owned()),
            detail: serde_json::json!({"incident": {"vm": "web-1", "score": 0.93, "n": i},
                                       "result": "ok \"quoted\" é"}),
        }
    }

    /// A log of `n` records in a fresh directory.
    fn write_log(n: i64) -> (tempfile::TempDir, PathBuf, Vec<AuditRecord>) {
        let dir = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(dir.path()).unwrap();
        let records = (0..n).map(|i| log.append(entry(i)).unwrap()).collect();
        let path = log.path().to_owned();
        (dir, path, records)
    }

    fn lines(path: &Path) -> Vec<String> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn write_lines(path: &Path, lines: &[String]) {
        fs::write(
            path,
            lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
        )
        .unwrap();
    }

    fn broken(result: Result<VerifyReport, VerifyError>) -> (u64, ChainProblem) {
        match result {
            Err(VerifyError::Broken { line, problem, .. }) => (line, problem),
            other => panic!("expected a broken chain, got {other:?}"),
        }
    }

    #[test]
    fn append_chains_records_and_reopen_continues_the_chain() {
        let (dir, path, records) = write_log(3);
        assert_eq!(records[0].prev_hash, GENESIS_HASH);
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.seq, i as u64);
            assert_eq!(r.hash, record_hash(r));
            assert_eq!(r.hash.len(), 64);
            if i > 0 {
                assert_eq!(r.prev_hash, records[i - 1].hash);
            }
        }
        let detail: Value = serde_json::from_str(&records[1].detail).unwrap();
        assert_eq!(detail["incident"]["n"], 1);

        let mut log = AuditLog::open(dir.path()).unwrap();
        assert_eq!(log.records(), 3);
        assert_eq!(log.tip_hash(), records[2].hash);
        let next = log.append(entry(3)).unwrap();
        assert_eq!(next.seq, 3);
        assert_eq!(next.prev_hash, records[2].hash);
        drop(log);

        let report = verify_file(&path, Some(&next.hash)).unwrap();
        assert_eq!(report.records, 4);
        assert_eq!(report.tip_hash, next.hash);
        assert_eq!(lines(&path).len(), 4);
    }

    #[test]
    fn empty_log_verifies_with_the_genesis_tip() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&dir.path().join("audit")).unwrap();
        assert_eq!(log.records(), 0);
        let report = verify_file(log.path(), None).unwrap();
        assert_eq!(report.records, 0);
        assert_eq!(report.tip_hash, GENESIS_HASH);
    }

    #[test]
    fn a_second_writer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _log = AuditLog::open(dir.path()).unwrap();
        let err = AuditLog::open(dir.path()).unwrap_err();
        assert!(matches!(err, AuditError::Locked { .. }), "{err:?}");
    }

    #[test]
    fn torn_last_line_is_cut_off_on_open_and_fails_verification() {
        let (dir, path, records) = write_log(3);
        let good = fs::read(&path).unwrap();
        let mut torn = good.clone();
        torn.extend_from_slice(br#"{"seq":3,"ts":17000"#);
        fs::write(&path, &torn).unwrap();

        let (line, problem) = broken(verify_file(&path, None));
        assert_eq!(line, 4);
        assert!(
            matches!(problem, ChainProblem::IncompleteLastLine),
            "{problem}"
        );

        let mut log = AuditLog::open(dir.path()).unwrap();
        assert_eq!(fs::read(&path).unwrap(), good);
        assert_eq!(log.records(), 3);
        let next = log.append(entry(3)).unwrap();
        assert_eq!(next.prev_hash, records[2].hash);
        assert_eq!(verify_file(&path, None).unwrap().records, 4);
    }

    #[test]
    fn a_broken_chain_refuses_to_open_and_names_the_line() {
        let (dir, path, _) = write_log(3);
        let mut l = lines(&path);
        l[1] = l[1].replace("act-1", "act-7");
        write_lines(&path, &l);
        let err = AuditLog::open(dir.path()).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, AuditError::Corrupt(_)), "{err:?}");
        assert!(
            message.contains("line 2: record seq 1: hash does not match its contents"),
            "{message}"
        );
        assert!(message.contains(AUDIT_FILE), "{message}");
    }

    #[test]
    fn every_single_bit_flip_anywhere_is_detected() {
        let (_dir, path, _) = write_log(4);
        let original = fs::read(&path).unwrap();
        assert!(verify_file(&path, None).is_ok());
        let mut line_of = Vec::with_capacity(original.len());
        let mut line = 1u64;
        for &b in &original {
            line_of.push(line);
            if b == b'\n' {
                line += 1;
            }
        }
        let mut changed_records_caught = 0;
        for pos in 0..original.len() {
            for bit in 0..8 {
                let mut bytes = original.clone();
                bytes[pos] ^= 1 << bit;
                fs::write(&path, &bytes).unwrap();
                let (line, problem) = broken(verify_file(&path, None));
                assert_eq!(line, line_of[pos], "byte {pos} bit {bit}: {problem}");
                // A flipped line that still parses as a record must be caught by its hash.
                let text = bytes
                    .split(|&b| b == b'\n')
                    .nth((line - 1) as usize)
                    .unwrap();
                if serde_json::from_slice::<AuditRecord>(text).is_ok() {
                    assert!(
                        problem.is_changed_record(),
                        "byte {pos} bit {bit}: {problem}"
                    );
                    changed_records_caught += 1;
                }
            }
        }
        // The loop did exercise records that still parse (letters, digits in values).
        assert!(changed_records_caught > 100, "{changed_records_caught}");
    }

    #[test]
    fn an_equivalent_json_escape_is_still_a_change() {
        let (_dir, path, _) = write_log(2);
        let mut l = lines(&path);
        assert!(l[1].contains(r"\u001f"), "{}", l[1]);
        l[1] = l[1].replace(r"\u001f", r"\u001F");
        write_lines(&path, &l);
        let (line, problem) = broken(verify_file(&path, None));
        assert_eq!(line, 2);
        assert!(
            matches!(problem, ChainProblem::NotCanonical { seq: 1 }),
            "{problem}"
        );
    }

    #[test]
    fn removed_duplicated_and_swapped_records_are_detected() {
        let (_dir, path, _) = write_log(5);
        let original = lines(&path);

        let mut removed = original.clone();
        removed.remove(2);
        write_lines(&path, &removed);
        let (line, problem) = broken(verify_file(&path, None));
        assert_eq!(line, 3);
        assert!(
            matches!(
                problem,
                ChainProblem::OutOfSequence {
                    seq: 3,
                    expected: 2
                }
            ),
            "{problem}"
        );

        let mut duplicated = original.clone();
        duplicated.insert(2, original[1].clone());
        write_lines(&path, &duplicated);
        let (line, problem) = broken(verify_file(&path, None));
        assert_eq!(line, 3);
        assert!(
            matches!(
                problem,
                ChainProblem::OutOfSequence {
                    seq: 1,
                    expected: 2
                }
            ),
            "{problem}"
        );

        let mut swapped = original.clone();
        swapped.swap(1, 3);
        write_lines(&path, &swapped);
        let (line, problem) = broken(verify_file(&path, None));
        assert_eq!(line, 2);
        assert!(
            matches!(
                problem,
                ChainProblem::OutOfSequence {
                    seq: 3,
                    expected: 1
                }
            ),
            "{problem}"
        );

        write_lines(&path, &original[1..]);
        let (line, problem) = broken(verify_file(&path, None));
        assert_eq!(line, 1);
        assert!(
            matches!(problem, ChainProblem::HeadMissing { seq: 1 }),
            "{problem}"
        );
    }

    #[test]
    fn a_removed_record_is_detected_even_when_the_rest_is_renumbered() {
        // Someone drops record 1 and rewrites record 2 as seq 1 with a fresh hash: the link to
        // record 0 still does not hold.
        let (_dir, path, records) = write_log(3);
        let mut forged = records[2].clone();
        forged.seq = 1;
        forged.hash = record_hash(&forged);
        let l = vec![
            serde_json::to_string(&records[0]).unwrap(),
            serde_json::to_string(&forged).unwrap(),
        ];
        write_lines(&path, &l);
        let (line, problem) = broken(verify_file(&path, None));
        assert_eq!(line, 2);
        assert!(
            matches!(problem, ChainProblem::BrokenLink { seq: 1 }),
            "{problem}"
        );
        let message = VerifyError::Broken {
            path: path.clone(),
            line,
            problem,
        }
        .to_string();
        assert!(
            message.contains("line 2: record seq 1: prev_hash"),
            "{message}"
        );
    }

    #[test]
    fn trailing_garbage_and_empty_lines_are_detected() {
        let (_dir, path, _) = write_log(2);
        let good = fs::read(&path).unwrap();

        let mut garbage = good.clone();
        garbage.extend_from_slice(b"junk\n");
        fs::write(&path, &garbage).unwrap();
        let (line, problem) = broken(verify_file(&path, None));
        assert_eq!(line, 3);
        assert!(matches!(problem, ChainProblem::Unparsable(_)), "{problem}");

        let mut empty = good.clone();
        empty.push(b'\n');
        fs::write(&path, &empty).unwrap();
        let (line, problem) = broken(verify_file(&path, None));
        assert_eq!(line, 3);
        assert!(matches!(problem, ChainProblem::EmptyLine), "{problem}");
    }

    #[test]
    fn the_expected_tip_catches_a_cut_tail() {
        let (_dir, path, records) = write_log(4);
        assert!(verify_file(&path, Some(&records[3].hash.to_uppercase())).is_ok());
        write_lines(&path, &lines(&path)[..2]);
        // Still a valid chain on its own ...
        assert_eq!(verify_file(&path, None).unwrap().records, 2);
        // ... but not the one whose tip was noted.
        match verify_file(&path, Some(&records[3].hash)) {
            Err(VerifyError::TipMismatch {
                records: 2,
                actual,
                why,
                ..
            }) => {
                assert_eq!(actual, records[1].hash);
                assert!(why.contains("no record of this log has that hash"), "{why}");
            }
            other => panic!("expected a tip mismatch, got {other:?}"),
        }
        // A log that grew after the tip was noted says where the noted tip is.
        let (_dir2, path2, records2) = write_log(4);
        match verify_file(&path2, Some(&records2[1].hash)) {
            Err(VerifyError::TipMismatch { why, .. }) => {
                assert!(
                    why.contains("record seq 1; the 2 records after it"),
                    "{why}"
                );
            }
            other => panic!("expected a tip mismatch, got {other:?}"),
        }
        assert!(matches!(
            verify_file(&path2, Some("abc")),
            Err(VerifyError::BadTip(_))
        ));
    }

    #[test]
    fn a_missing_file_is_its_own_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = verify_file(&dir.path().join("nope.jsonl"), None).unwrap_err();
        assert!(matches!(err, VerifyError::Missing { .. }), "{err:?}");
        assert!(err.to_string().contains("nope.jsonl does not exist"));
    }

    #[test]
    fn the_hash_encoding_is_unambiguous_and_pinned() {
        let base = AuditRecord {
            seq: 0,
            ts: 0,
            actor: "ab".to_owned(),
            event: "c".to_owned(),
            action_id: None,
            policy: Some(String::new()),
            policy_version: None,
            detail: "{}".to_owned(),
            prev_hash: GENESIS_HASH.to_owned(),
            hash: String::new(),
        };
        // Moving a byte between adjacent fields, or None against an empty string, changes
        // the hash.
        let mut shifted = base.clone();
        shifted.actor = "a".to_owned();
        shifted.event = "bc".to_owned();
        assert_ne!(record_hash(&base), record_hash(&shifted));
        let mut none = base.clone();
        none.policy = None;
        assert_ne!(record_hash(&base), record_hash(&none));
        let mut moved = base.clone();
        moved.policy = None;
        moved.action_id = Some(String::new());
        assert_ne!(record_hash(&base), record_hash(&moved));
        // `hash` itself is not hashed.
        let mut with_hash = base.clone();
        with_hash.hash = "x".to_owned();
        assert_eq!(record_hash(&base), record_hash(&with_hash));

        // Pinned against an independent computation of the documented encoding.
        let mut expected = Vec::new();
        expected.extend_from_slice(b"fleetmind-audit-v1\n");
        expected.extend_from_slice(&[0; 16]);
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 2, b'a', b'b']);
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1, b'c']);
        expected.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 2, b'{', b'}']);
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 64]);
        expected.extend_from_slice(GENESIS_HASH.as_bytes());
        assert_eq!(record_hash(&base), to_hex(&Sha256::digest(&expected)));
    }
}

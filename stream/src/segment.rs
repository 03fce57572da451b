//! The on-disk format of the embedded log, and the scan that recovers a segment after a crash.
//!
//! This module is the only place that knows the byte layout; the writer and the readers go
//! through it.
//!
//! # Directory
//!
//! ```text
//! <dir>/LOCK                        advisory lock (flock) held by the process that has the log open
//! <dir>/00000000000000000000.log    segment whose first record has offset 0
//! <dir>/00000000000000052133.log    segment whose first record has offset 52133
//! ```
//!
//! A segment is named by the offset of its first record, zero-padded to 20 digits so names sort
//! in offset order. The last segment is the *active* one, the only one ever written to. The
//! record count of every other segment is implied by the name of the segment after it. Other
//! files in the directory are ignored.
//!
//! # Segment file
//!
//! All integers are little-endian.
//!
//! ```text
//! header (16 bytes)
//!   0..4    magic  b"FMEL"
//!   4..6    format version (u16) = 1
//!   6..8    reserved (u16) = 0
//!   8..16   base offset (u64), equal to the number in the file name
//! records, back to back until the end of the file, each:
//!   0..4    payload length N (u32), at most MAX_PAYLOAD_BYTES
//!   4..8    CRC-32 (IEEE, as crc32fast computes it) of bytes 0..4 followed by the payload
//!   8..8+N  payload
//! ```
//!
//! The checksum covers the length field as well as the payload: a bit flip in a length is then
//! caught, and a run of zero bytes (what a file system may leave after a power loss) is not a
//! valid empty record, since the CRC of an all-zero length is not zero.
//!
//! # Recovery
//!
//! Only the active segment can end in a partial record: every write goes to it, and a segment
//! is never written again once the next one exists. At open, [`scan_segment`] therefore reads
//! the whole last segment and classifies the first bad frame:
//! - *torn*: fewer than 8 bytes of frame header left, a length reaching past the end of the
//!   file, or a complete frame that fails its checksum but is the last frame of the file (or is
//!   followed only by zero bytes). The log truncates the file there and warns.
//! - *corrupt*: anything else, e.g. a checksum failure followed by more data. Truncating would
//!   drop records that may be intact, so opening fails with the file and byte position.
//!
//! Older segments are checked record by record when they are read (every read verifies the
//! checksum), and a reader also checks that each segment ends exactly where the next begins.

use std::ffi::OsStr;
use std::io::{self, Read};

/// First bytes of every segment file.
pub const MAGIC: [u8; 4] = *b"FMEL";
/// Version of the layout described in the module docs.
pub const FORMAT_VERSION: u16 = 1;
/// Bytes of the segment header.
pub const HEADER_LEN: u64 = 16;
/// Bytes of the per-record frame header (length + checksum).
pub const FRAME_HEADER_LEN: u64 = 8;
/// Largest payload one record may hold (64 MiB). Larger lengths are read as corruption.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024 * 1024;
/// Distance in bytes between two entries of the in-memory sparse index of a segment.
pub const INDEX_INTERVAL_BYTES: u64 = 1024 * 1024;

const SEGMENT_SUFFIX: &str = ".log";
const NAME_DIGITS: usize = 20;

/// The file name of the segment whose first record has offset `base`.
#[must_use]
pub fn segment_file_name(base: u64) -> String {
    format!("{base:0NAME_DIGITS$}{SEGMENT_SUFFIX}")
}

/// The base offset encoded in a segment file name, or `None` when the name is not a segment's.
#[must_use]
pub fn parse_segment_file_name(name: &OsStr) -> Option<u64> {
    let name = name.to_str()?;
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The header of the segment whose first record has offset `base`.
#[must_use]
pub fn encode_header(base: u64) -> [u8; HEADER_LEN as usize] {
    let mut header = [0u8; HEADER_LEN as usize];
    header[0..4].copy_from_slice(&MAGIC);
    header[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[8..16].copy_from_slice(&base.to_le_bytes());
    header
}

/// Checks a segment header against the base offset of its file name; the error says what is
/// wrong.
///
/// # Errors
/// A description of the mismatch (magic, version or base offset).
pub fn check_header(header: &[u8; HEADER_LEN as usize], base: u64) -> Result<(), String> {
    if header[0..4] != MAGIC {
        return Err(format!(
            "bad magic {:02x?}, expected {:02x?}",
            &header[0..4],
            MAGIC
        ));
    }
    let version = u16::from_le_bytes([header[4], header[5]]);
    if version != FORMAT_VERSION {
        return Err(format!(
            "format version {version} is not supported (expected {FORMAT_VERSION})"
        ));
    }
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&header[8..16]);
    let stored = u64::from_le_bytes(raw);
    if stored != base {
        return Err(format!(
            "header says base offset {stored} but the file name says {base}"
        ));
    }
    Ok(())
}

/// The checksum stored in a frame: CRC-32 of the length field followed by the payload.
#[must_use]
pub fn frame_checksum(len_field: [u8; 4], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len_field);
    hasher.update(payload);
    hasher.finalize()
}

/// Appends the frame of one record to `buf`. The caller has checked the payload length against
/// [`MAX_PAYLOAD_BYTES`].
pub fn encode_frame(buf: &mut Vec<u8>, payload: &[u8]) {
    debug_assert!(payload.len() <= MAX_PAYLOAD_BYTES);
    #[allow(clippy::cast_possible_truncation)] // bounded by MAX_PAYLOAD_BYTES < u32::MAX
    let len_field = (payload.len() as u32).to_le_bytes();
    buf.extend_from_slice(&len_field);
    buf.extend_from_slice(&frame_checksum(len_field, payload).to_le_bytes());
    buf.extend_from_slice(payload);
}

/// Bytes one record of `payload_len` bytes takes on disk.
#[must_use]
pub const fn frame_len(payload_len: usize) -> u64 {
    FRAME_HEADER_LEN + payload_len as u64
}

/// What [`read_frame`] found at the current position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A valid record; its payload is in the buffer.
    Record,
    /// The end of the data, exactly at a frame boundary.
    End,
    /// The data ends inside the frame: `available` bytes of a frame that needs `needed`.
    Short {
        /// Bytes present from the frame start to the end of the data.
        available: u64,
        /// Bytes the frame needs (8 while the length itself is incomplete).
        needed: u64,
    },
    /// A length above [`MAX_PAYLOAD_BYTES`].
    BadLength(u32),
    /// A complete frame whose checksum does not match; the frame's bytes have been consumed.
    BadChecksum,
}

/// Reads one frame; on [`Frame::Record`] the payload is left in `payload` (resized to fit).
///
/// # Errors
/// I/O errors of the reader.
pub fn read_frame<R: Read>(reader: &mut R, payload: &mut Vec<u8>) -> io::Result<Frame> {
    let mut head = [0u8; FRAME_HEADER_LEN as usize];
    let got = read_full(reader, &mut head)?;
    if got == 0 {
        return Ok(Frame::End);
    }
    if got < head.len() {
        return Ok(Frame::Short {
            available: got as u64,
            needed: FRAME_HEADER_LEN,
        });
    }
    let len_field = [head[0], head[1], head[2], head[3]];
    let len = u32::from_le_bytes(len_field);
    let stored = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len as usize > MAX_PAYLOAD_BYTES {
        return Ok(Frame::BadLength(len));
    }
    payload.resize(len as usize, 0);
    let got = read_full(reader, payload)?;
    if got < payload.len() {
        return Ok(Frame::Short {
            available: FRAME_HEADER_LEN + got as u64,
            needed: frame_len(len as usize),
        });
    }
    if frame_checksum(len_field, payload) != stored {
        return Ok(Frame::BadChecksum);
    }
    Ok(Frame::Record)
}

/// Fills `buf` as far as the data goes; returns how many bytes were read (less than
/// `buf.len()` only at end of data).
fn read_full<R: Read>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// One entry of a segment's sparse in-memory index: the record with offset `offset` starts at
/// byte `position` of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// Global offset of the record.
    pub offset: u64,
    /// Byte position of its frame in the segment file.
    pub position: u64,
}

/// The result of scanning the records of a segment (after its header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Valid records found before the end or the first bad frame.
    pub records: u64,
    /// Byte length of the file up to the end of the last valid record (header included).
    pub valid_len: u64,
    /// Sparse index of the valid records.
    pub index: Vec<IndexEntry>,
    /// Why the scan stopped before the end of the file, if it did.
    pub problem: Option<ScanProblem>,
}

/// The first bad frame of a scanned segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanProblem {
    /// Byte position of the frame in the file.
    pub position: u64,
    /// True when it is the tail a crash leaves (safe to truncate), false for corruption.
    pub torn: bool,
    /// What is wrong, for logs and errors.
    pub reason: String,
}

/// Scans the records of a segment whose header has already been read from `reader`;
/// `base` is the segment's base offset and `file_len` its length in bytes. See the module docs
/// for how a bad frame is classified.
///
/// # Errors
/// I/O errors of the reader.
pub fn scan_segment<R: Read>(reader: &mut R, base: u64, file_len: u64) -> io::Result<Scan> {
    let mut payload = Vec::new();
    let mut position = HEADER_LEN;
    let mut records = 0u64;
    let mut index = Vec::new();
    let mut next_index_at = HEADER_LEN;
    loop {
        let frame = read_frame(reader, &mut payload)?;
        let problem = match frame {
            Frame::End => None,
            Frame::Record => {
                if position >= next_index_at {
                    index.push(IndexEntry {
                        offset: base + records,
                        position,
                    });
                    next_index_at = position + INDEX_INTERVAL_BYTES;
                }
                records += 1;
                position += frame_len(payload.len());
                continue;
            }
            Frame::Short { available, needed } => Some(ScanProblem {
                position,
                torn: true,
                reason: format!(
                    "record cut short: {available} of {needed} bytes present at the end of the file"
                ),
            }),
            Frame::BadLength(len) => Some(ScanProblem {
                position,
                torn: false,
                reason: format!("record length {len} exceeds the maximum {MAX_PAYLOAD_BYTES}"),
            }),
            Frame::BadChecksum => {
                let frame_end = position + frame_len(payload.len());
                let last_frame = frame_end == file_len;
                let zero_tail = is_zero_frame(&payload) && rest_is_zero(reader)?;
                let torn = last_frame || zero_tail;
                Some(ScanProblem {
                    position,
                    torn,
                    reason: if torn {
                        "checksum mismatch in the last record of the file".to_owned()
                    } else {
                        "checksum mismatch with more records after it".to_owned()
                    },
                })
            }
        };
        return Ok(Scan {
            records,
            valid_len: position,
            index,
            problem,
        });
    }
}

/// True when a frame that failed its checksum was all zeros (its payload, and so its length).
fn is_zero_frame(payload: &[u8]) -> bool {
    payload.iter().all(|&b| b == 0)
}

/// Reads the reader to its end and tells whether everything left is zero bytes.
fn rest_is_zero<R: Read>(reader: &mut R) -> io::Result<bool> {
    let mut chunk = [0u8; 8192];
    loop {
        let n = read_full(reader, &mut chunk)?;
        if chunk[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        if n < chunk.len() {
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    fn segment(base: u64, payloads: &[&[u8]]) -> Vec<u8> {
        let mut buf = encode_header(base).to_vec();
        for p in payloads {
            encode_frame(&mut buf, p);
        }
        buf
    }

    fn scan(bytes: &[u8], base: u64) -> Scan {
        let mut cursor = Cursor::new(bytes);
        let mut header = [0u8; HEADER_LEN as usize];
        cursor.read_exact(&mut header).expect("header");
        check_header(&header, base).expect("valid header");
        scan_segment(&mut cursor, base, bytes.len() as u64).expect("in-memory read")
    }

    #[test]
    fn file_names_round_trip_and_sort() {
        let name = segment_file_name(52133);
        assert_eq!(name, "00000000000000052133.log");
        assert_eq!(parse_segment_file_name(OsStr::new(&name)), Some(52133));
        assert_eq!(parse_segment_file_name(OsStr::new("LOCK")), None);
        assert_eq!(parse_segment_file_name(OsStr::new("52133.log")), None);
        assert_eq!(
            parse_segment_file_name(OsStr::new("0000000000000005213x.log")),
            None
        );
        assert!(segment_file_name(9) < segment_file_name(10));
    }

    #[test]
    fn header_checks_magic_version_and_base() {
        let header = encode_header(7);
        assert!(check_header(&header, 7).is_ok());
        assert!(check_header(&header, 8).is_err());
        let mut bad = header;
        bad[0] = b'X';
        assert!(
            check_header(&bad, 7)
                .expect_err("bad header")
                .contains("magic")
        );
        let mut bad = header;
        bad[4] = 9;
        assert!(
            check_header(&bad, 7)
                .expect_err("bad header")
                .contains("version")
        );
    }

    #[test]
    fn frames_round_trip() {
        let bytes = segment(0, &[b"hello", b"", b"world"]);
        let mut cursor = Cursor::new(&bytes[HEADER_LEN as usize..]);
        let mut payload = Vec::new();
        let mut seen = Vec::new();
        while read_frame(&mut cursor, &mut payload).expect("read") == Frame::Record {
            seen.push(payload.clone());
        }
        assert_eq!(seen, vec![b"hello".to_vec(), Vec::new(), b"world".to_vec()]);
    }

    #[test]
    fn zero_bytes_are_not_a_valid_record() {
        assert_ne!(frame_checksum([0; 4], &[]), 0);
        let mut bytes = segment(0, &[b"a"]);
        bytes.extend_from_slice(&[0u8; 64]);
        let scan = scan(&bytes, 0);
        assert_eq!(scan.records, 1);
        let problem = scan.problem.expect("zero tail detected");
        assert!(problem.torn, "{problem:?}");
        assert_eq!(problem.position, HEADER_LEN + frame_len(1));
    }

    #[test]
    fn every_cut_of_the_last_record_is_torn() {
        let bytes = segment(100, &[b"first record", b"second record"]);
        let second_at = HEADER_LEN + frame_len(12);
        for cut in second_at + 1..bytes.len() as u64 {
            let scan = scan(&bytes[..cut as usize], 100);
            assert_eq!(scan.records, 1, "cut at {cut}");
            assert_eq!(scan.valid_len, second_at);
            assert!(scan.problem.expect("torn").torn);
        }
        let clean = scan(&bytes, 100);
        assert_eq!((clean.records, clean.problem), (2, None));
    }

    #[test]
    fn flipped_byte_in_last_record_is_torn_but_in_an_earlier_one_is_corrupt() {
        let bytes = segment(0, &[b"aaaa", b"bbbb", b"cccc"]);
        let mut last = bytes.clone();
        let end = last.len();
        last[end - 1] ^= 0x40;
        let scan_last = scan(&last, 0);
        assert_eq!(scan_last.records, 2);
        assert!(scan_last.problem.expect("bad").torn);

        let mut middle = bytes;
        let second_payload = (HEADER_LEN + frame_len(4) + FRAME_HEADER_LEN) as usize;
        middle[second_payload] ^= 0x40;
        let scan_middle = scan(&middle, 0);
        assert_eq!(scan_middle.records, 1);
        let problem = scan_middle.problem.expect("bad");
        assert!(!problem.torn);
        assert_eq!(problem.position, HEADER_LEN + frame_len(4));
    }

    #[test]
    fn index_has_an_entry_per_interval() {
        let big = vec![7u8; 300 * 1024];
        let payloads: Vec<&[u8]> = (0..10).map(|_| big.as_slice()).collect();
        let bytes = segment(5, &payloads);
        let scan = scan(&bytes, 5);
        assert_eq!(scan.records, 10);
        assert_eq!(
            scan.index.first().map(|e| (e.offset, e.position)),
            Some((5, HEADER_LEN))
        );
        assert!(
            scan.index.len() >= 2 && scan.index.len() <= 4,
            "{:?}",
            scan.index
        );
        for pair in scan.index.windows(2) {
            assert!(pair[1].position - pair[0].position >= INDEX_INTERVAL_BYTES);
        }
    }
}

//! Reading committed records back from the segment files: [`Replay`] for synchronous replays,
//! and the cursor that live subscriptions drive from the blocking pool.
//!
//! A reader never takes the writer's lock. It reads only records below a committed end offset
//! it was given, so it never sees a partial write, and it finds the segment holding an offset
//! through the shared segment list (and each segment's sparse index), then reads frames
//! forward, verifying every checksum, including those of records it skips over.
//!
//! Buffered bytes are trusted only for records that were committed when the buffer could have
//! been filled: when the cursor reaches the end offset it was last told about, it drops its
//! buffer and re-reads from the file. This matters because a failed append is truncated back
//! and the same bytes are then rewritten by the next append.
//!
//! A segment that ends before the next segment's base offset (or holds data past it) is
//! reported as [`ReadError::Corrupt`]: records are never skipped silently.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

use crate::api::ReadError;
use crate::log::Shared;
use crate::segment::{Frame, HEADER_LEN, check_header, frame_len, read_frame};
use crate::{Offset, Record};

const READ_BUFFER_BYTES: usize = 256 * 1024;

/// A synchronous replay of the records from one offset to the end offset at the time it was
/// created; see [`EventLog::replay`](crate::EventLog::replay).
///
/// Yields `Ok(record)` in offset order, then `None`; after an `Err` it yields `None`.
pub struct Replay {
    cursor: Cursor,
    end: u64,
    failed: bool,
}

impl Replay {
    pub(crate) fn new(shared: Arc<Shared>, from: u64, end: u64) -> Replay {
        Replay {
            cursor: Cursor::new(shared, from),
            end,
            failed: false,
        }
    }

    /// The offset of the next record this replay yields.
    #[must_use]
    pub fn position(&self) -> Offset {
        Offset(self.cursor.next)
    }
}

impl Iterator for Replay {
    type Item = Result<Record, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.cursor.next >= self.end {
            return None;
        }
        let item = self.cursor.read_next(self.end);
        self.failed = item.is_err();
        Some(item)
    }
}

impl fmt::Debug for Replay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replay")
            .field("next", &self.cursor.next)
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

/// A position in the log and the open segment file that holds it.
pub(crate) struct Cursor {
    shared: Arc<Shared>,
    /// The offset of the next record to return.
    pub(crate) next: u64,
    segment: Option<OpenSegment>,
    /// Buffered bytes may be used for records below this offset only.
    trusted_until: u64,
}

struct OpenSegment {
    base: u64,
    path: PathBuf,
    reader: BufReader<File>,
    /// Offset of the record at `position`.
    offset: u64,
    /// Byte position of the next frame in the file.
    position: u64,
    /// Base of the following segment, once known.
    limit: Option<u64>,
}

impl Cursor {
    pub(crate) fn new(shared: Arc<Shared>, from: u64) -> Cursor {
        Cursor {
            shared,
            next: from,
            segment: None,
            trusted_until: 0,
        }
    }

    /// Reads the record at `self.next`, which the caller guarantees is below the committed
    /// end `end`.
    pub(crate) fn read_next(&mut self, end: u64) -> Result<Record, ReadError> {
        debug_assert!(self.next < end);
        let mut payload = Vec::new();
        loop {
            if self.segment.is_none() {
                let opened = self.open_at(self.next)?;
                self.trusted_until = end;
                self.segment = Some(opened);
            }
            let Some(segment) = self.segment.as_mut() else {
                continue;
            };
            if segment.limit.is_some_and(|limit| segment.offset >= limit) {
                segment.check_ends_here()?;
                self.segment = None;
                continue;
            }
            if segment.offset >= self.trusted_until {
                segment
                    .reader
                    .seek(SeekFrom::Start(segment.position))
                    .map_err(|source| io_error(&segment.path, source))?;
                self.trusted_until = end;
            }
            let position = segment.position;
            let frame = read_frame(&mut segment.reader, &mut payload)
                .map_err(|source| io_error(&segment.path, source))?;
            match frame {
                Frame::Record => {
                    segment.position += frame_len(payload.len());
                    segment.offset += 1;
                    if segment.offset > self.next {
                        let offset = Offset(self.next);
                        self.next += 1;
                        return Ok(Record { offset, payload });
                    }
                }
                Frame::End => {
                    // A committed record is not in this file: the writer must have rolled.
                    if segment.limit.is_none() {
                        segment.limit = successor(&self.shared, segment.base);
                    }
                    if segment.limit != Some(segment.offset) {
                        return Err(ReadError::Corrupt {
                            path: segment.path.clone(),
                            position,
                            reason: match segment.limit {
                                Some(limit) => format!(
                                    "segment ends at offset {} but the next segment starts at {limit}",
                                    segment.offset
                                ),
                                None => format!(
                                    "committed offset {} is missing from the active segment",
                                    segment.offset
                                ),
                            },
                        });
                    }
                }
                Frame::Short { available, needed } => {
                    return Err(corrupt(
                        segment,
                        position,
                        format!("record cut short: {available} of {needed} bytes"),
                    ));
                }
                Frame::BadLength(len) => {
                    return Err(corrupt(
                        segment,
                        position,
                        format!("record length {len} is impossible"),
                    ));
                }
                Frame::BadChecksum => {
                    return Err(corrupt(
                        segment,
                        position,
                        "record checksum mismatch".to_owned(),
                    ));
                }
            }
        }
    }

    /// Opens the segment holding `offset`, positioned at the nearest indexed record at or
    /// before it.
    fn open_at(&self, offset: u64) -> Result<OpenSegment, ReadError> {
        let (base, path, limit, start) = {
            let segments = self.shared.segments();
            let earliest = segments.first().map_or(0, |s| s.base);
            if offset < earliest || segments.is_empty() {
                return Err(ReadError::Expired {
                    requested: Offset(offset),
                    earliest: Offset(earliest),
                });
            }
            let at = segments.partition_point(|s| s.base <= offset) - 1;
            let meta = &segments[at];
            let start = meta
                .index
                .iter()
                .take_while(|e| e.offset <= offset)
                .last()
                .map(|e| (e.offset, e.position));
            (
                meta.base,
                meta.path.clone(),
                segments.get(at + 1).map(|s| s.base),
                start,
            )
        };
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ReadError::Expired {
                    requested: Offset(offset),
                    earliest: Offset(self.shared.earliest()),
                });
            }
            Err(source) => return Err(io_error(&path, source)),
        };
        let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, file);
        let (record_offset, position) = match start {
            Some((record_offset, position)) => {
                reader
                    .seek(SeekFrom::Start(position))
                    .map_err(|source| io_error(&path, source))?;
                (record_offset, position)
            }
            None => {
                let mut header = [0u8; HEADER_LEN as usize];
                reader
                    .read_exact(&mut header)
                    .map_err(|source| io_error(&path, source))?;
                check_header(&header, base).map_err(|reason| ReadError::Corrupt {
                    path: path.clone(),
                    position: 0,
                    reason,
                })?;
                (base, HEADER_LEN)
            }
        };
        Ok(OpenSegment {
            base,
            path,
            reader,
            offset: record_offset,
            position,
            limit,
        })
    }
}

impl OpenSegment {
    /// At the successor's base offset: the file must end here.
    fn check_ends_here(&mut self) -> Result<(), ReadError> {
        let rest = self
            .reader
            .fill_buf()
            .map_err(|source| io_error(&self.path, source))?;
        if rest.is_empty() {
            return Ok(());
        }
        Err(ReadError::Corrupt {
            path: self.path.clone(),
            position: self.position,
            reason: format!(
                "data after offset {} although the next segment starts there",
                self.offset
            ),
        })
    }
}

fn successor(shared: &Shared, base: u64) -> Option<u64> {
    let segments = shared.segments();
    segments.iter().map(|s| s.base).find(|&b| b > base)
}

fn corrupt(segment: &OpenSegment, position: u64, reason: String) -> ReadError {
    ReadError::Corrupt {
        path: segment.path.clone(),
        position,
        reason,
    }
}

fn io_error(path: &std::path::Path, source: io::Error) -> ReadError {
    ReadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

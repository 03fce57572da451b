//! Writing one compaction step's Parquet files: one file per table and hour, streamed row group
//! by row group into a hidden temporary file, then made durable and renamed into place.
//!
//! Memory stays bounded whatever the step's size: records are converted to Arrow
//! [`BATCH_ROWS`] at a time and handed to the Parquet writer, which flushes a row group every
//! [`ROW_GROUP_ROWS`] rows. Files are zstd-compressed with the writer's default statistics
//! (per page and row group, which DataFusion and DuckDB use to skip row groups by `ts`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::properties::WriterProperties;
use fleetmind_schema::{Record, RecordKind};

use super::layout::{self, Hour};
use super::progress::sync_dir;
use crate::store::{ByKind, schema_of};

/// Records converted to Arrow at a time.
const BATCH_ROWS: usize = 8 * 1024;
/// Rows per Parquet row group.
const ROW_GROUP_ROWS: usize = 128 * 1024;
/// zstd level: the library's default, a good ratio at a few hundred MB/s.
const ZSTD_LEVEL: i32 = 3;

/// A Parquet file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A file or directory operation failed.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The Parquet encoder failed.
    #[error("cannot encode Parquet file {}", path.display())]
    Parquet {
        /// The file being written.
        path: PathBuf,
        /// The encoder's error.
        #[source]
        source: ParquetError,
    },
}

/// A file the step wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Written {
    pub(crate) path: PathBuf,
    pub(crate) rows: u64,
    pub(crate) bytes: u64,
}

/// The open files of one step.
pub(crate) struct StepWriter {
    root: PathBuf,
    seq: u64,
    props: WriterProperties,
    files: BTreeMap<(RecordKind, Hour), OpenFile>,
    /// Records that did not fit their Arrow schema; dropped and counted.
    pub(crate) unconvertible: u64,
}

struct OpenFile {
    dir: PathBuf,
    temp: PathBuf,
    writer: ArrowWriter<File>,
    pending: Vec<Record>,
    rows: u64,
}

impl StepWriter {
    /// A writer of step `seq`'s files under `root`.
    pub(crate) fn new(root: &Path, seq: u64) -> StepWriter {
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(ZSTD_LEVEL).unwrap_or_default(),
            ))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .build();
        StepWriter {
            root: root.to_path_buf(),
            seq,
            props,
            files: BTreeMap::new(),
            unconvertible: 0,
        }
    }

    /// Partitions with a file open.
    pub(crate) fn open_files(&self) -> usize {
        self.files.len()
    }

    /// Adds a record to its table's file for `hour`, creating the file on first use.
    ///
    /// # Errors
    ///
    /// [`WriteError`] if the directory or file cannot be created or the encoder fails.
    pub(crate) fn push(&mut self, hour: Hour, record: Record) -> Result<(), WriteError> {
        let kind = record.kind();
        let file = match self.files.entry((kind, hour)) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let dir = layout::partition_dir(&self.root, kind.table_name(), hour);
                e.insert(OpenFile::create(dir, self.seq, kind, self.props.clone())?)
            }
        };
        file.pending.push(record);
        if file.pending.len() >= BATCH_ROWS {
            self.unconvertible += file.flush_pending()?;
        }
        Ok(())
    }

    /// Closes every file, fsyncs it, renames it to its final name and fsyncs the directories
    /// concerned. When this returns, every file is durable under its final name.
    ///
    /// # Errors
    ///
    /// [`WriteError`]; files already renamed stay (they belong to the uncommitted step and are
    /// swept before the next one).
    pub(crate) fn finish(mut self) -> Result<(Vec<Written>, u64), WriteError> {
        let mut written = Vec::with_capacity(self.files.len());
        let mut dirs = BTreeSet::new();
        for ((kind, _), mut file) in std::mem::take(&mut self.files) {
            self.unconvertible += file.flush_pending()?;
            if file.rows == 0 {
                // Every record failed to convert: no empty file.
                drop(file.writer);
                remove_quietly(&file.temp);
                continue;
            }
            let parquet = |source| WriteError::Parquet {
                path: file.temp.clone(),
                source,
            };
            let handle = file.writer.into_inner().map_err(parquet)?;
            handle.sync_all().map_err(|source| WriteError::Io {
                action: "fsync",
                path: file.temp.clone(),
                source,
            })?;
            let bytes = handle.metadata().map(|m| m.len()).unwrap_or(0);
            drop(handle);
            let path = file.dir.join(layout::file_name(self.seq));
            fs::rename(&file.temp, &path).map_err(|source| WriteError::Io {
                action: "rename into place",
                path: path.clone(),
                source,
            })?;
            // The hour directory, and its parents up to the table's, may be new.
            let table_dir = self.root.join(kind.table_name());
            let mut dir = Some(file.dir.as_path());
            while let Some(d) = dir {
                dirs.insert(d.to_path_buf());
                if d == table_dir {
                    break;
                }
                dir = d.parent();
            }
            written.push(Written {
                path,
                rows: file.rows,
                bytes,
            });
        }
        if !written.is_empty() {
            dirs.insert(self.root.clone());
        }
        for dir in dirs {
            sync_dir(&dir).map_err(|source| WriteError::Io {
                action: "fsync directory",
                path: dir.clone(),
                source,
            })?;
        }
        Ok((written, self.unconvertible))
    }
}

impl OpenFile {
    fn create(
        dir: PathBuf,
        seq: u64,
        kind: RecordKind,
        props: WriterProperties,
    ) -> Result<OpenFile, WriteError> {
        fs::create_dir_all(&dir).map_err(|source| WriteError::Io {
            action: "create directory",
            path: dir.clone(),
            source,
        })?;
        let temp = dir.join(layout::temp_name(seq));
        let handle = File::create(&temp).map_err(|source| WriteError::Io {
            action: "create",
            path: temp.clone(),
            source,
        })?;
        let writer =
            ArrowWriter::try_new(handle, schema_of(kind), Some(props)).map_err(|source| {
                WriteError::Parquet {
                    path: temp.clone(),
                    source,
                }
            })?;
        Ok(OpenFile {
            dir,
            temp,
            writer,
            pending: Vec::with_capacity(BATCH_ROWS),
            rows: 0,
        })
    }

    /// Converts the pending records and writes them; returns how many could not be converted.
    fn flush_pending(&mut self) -> Result<u64, WriteError> {
        if self.pending.is_empty() {
            return Ok(0);
        }
        let count = self.pending.len();
        let grouped = ByKind::group(self.pending.drain(..));
        let (batches, error) = grouped.batches();
        let batches = match error {
            None => batches,
            // One bad record must not cost its neighbours: convert one by one, drop the bad.
            Some(_) => grouped
                .into_records()
                .filter_map(|r| {
                    let (mut b, e) = ByKind::group([r]).batches();
                    if let Some(e) = e {
                        tracing::warn!(error = %e, "a record does not fit its Arrow schema; not compacted");
                    }
                    b.pop()
                })
                .collect(),
        };
        let mut rows = 0;
        for (_, batch) in batches {
            rows += batch.num_rows();
            self.writer
                .write(&batch)
                .map_err(|source| WriteError::Parquet {
                    path: self.temp.clone(),
                    source,
                })?;
        }
        self.rows += rows as u64;
        Ok((count - rows) as u64)
    }
}

fn remove_quietly(path: &Path) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove a temporary Parquet file");
    }
}

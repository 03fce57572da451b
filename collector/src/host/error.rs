//! The one error of host sampling, and the file reads that produce it.
//!
//! Every variant names the file, and a parse error also names the line, so that an operator
//! reading a log line knows which file on which host to look at.

use std::io;
use std::path::{Path, PathBuf};

/// Why a host sample could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// A file the collector cannot do without does not exist (wrong root, or not Linux).
    #[error("{} does not exist", path.display())]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// A file exists but could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the read returned.
        #[source]
        source: io::Error,
    },
    /// A line of a file does not have the expected shape.
    #[error("{}:{line_no}: {reason}: {line:?}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Line number, from 1.
        line_no: usize,
        /// The offending line, as read.
        line: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A file is well formed line by line but lacks something the collector needs.
    #[error("{}: {reason}", path.display())]
    Incomplete {
        /// The file.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
}

impl SampleError {
    /// The file this error is about.
    #[must_use]
    pub fn path(&self) -> &Path {
        match self {
            SampleError::Missing { path }
            | SampleError::Read { path, .. }
            | SampleError::Malformed { path, .. }
            | SampleError::Incomplete { path, .. } => path,
        }
    }

    pub(super) fn incomplete(path: &Path, reason: impl Into<String>) -> Self {
        SampleError::Incomplete {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    pub(super) fn malformed(path: &Path, line_no: usize, line: &str, reason: &'static str) -> Self {
        SampleError::Malformed {
            path: path.to_path_buf(),
            line_no,
            line: line.to_owned(),
            reason,
        }
    }
}

/// Reads a file the collector needs; its absence is [`SampleError::Missing`].
pub(super) fn read_required(path: &Path) -> Result<String, SampleError> {
    std::fs::read_to_string(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => SampleError::Missing {
            path: path.to_path_buf(),
        },
        _ => SampleError::Read {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// Checks every line of `content` with `problem`, which returns why a line is bad; the first
/// bad line becomes [`SampleError::Malformed`].
///
/// Run before a procfs-core parser: its errors say neither which line failed nor why, and
/// some of its arithmetic overflows on absurd values.
pub(super) fn check_lines(
    path: &Path,
    content: &str,
    problem: impl Fn(&str) -> Option<&'static str>,
) -> Result<(), SampleError> {
    for (index, line) in content.lines().enumerate() {
        if let Some(reason) = problem(line) {
            return Err(SampleError::malformed(path, index + 1, line, reason));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_names_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stat");
        let err = read_required(&path).expect_err("no file");
        assert!(matches!(err, SampleError::Missing { .. }), "{err:?}");
        assert_eq!(err.path(), path);
        assert_eq!(
            err.to_string(),
            format!("{} does not exist", path.display())
        );
    }

    #[test]
    fn malformed_line_is_numbered_from_one() {
        let path = Path::new("/proc/x");
        let err = check_lines(path, "good\nbad\n", |l| (l == "bad").then_some("is bad"))
            .expect_err("bad line");
        assert_eq!(err.to_string(), "/proc/x:2: is bad: \"bad\"");
    }
}

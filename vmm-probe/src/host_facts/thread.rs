//! Per-thread facts: `schedstat` (CPU time, run-queue wait, timeslices), `stat` (last CPU,
//! faults, CPU ticks) and `status` (allowed CPUs and memory nodes, context switches).

use std::io;
use std::path::{Path, PathBuf};

use super::{IdListError, parse_id_list, task_file};

/// Why a thread's procfs file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadThreadError {
    /// The file could not be read (no such thread, or no schedstats in this kernel).
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The file does not have the expected shape.
    #[error("malformed {path}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: MalformedError,
    },
}

/// What is wrong with a procfs file's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MalformedError {
    /// A required field is missing or not a number.
    #[error("field {0} is missing or not a number")]
    Field(&'static str),
    /// `stat` has no `)` closing the command name.
    #[error("no ')' after the command name")]
    NoCommEnd,
    /// A CPU or node list is malformed.
    #[error("bad {field}")]
    List {
        /// Which field.
        field: &'static str,
        /// The parse error.
        #[source]
        source: IdListError,
    },
}

/// Scheduler statistics of a thread (`/proc/<pid>/task/<tid>/schedstat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedStat {
    /// Time spent running on a CPU, in nanoseconds.
    pub run_ns: u64,
    /// Time spent runnable but waiting on a run queue, in nanoseconds: CPU contention.
    pub wait_ns: u64,
    /// Number of timeslices run on a CPU.
    pub timeslices: u64,
}

/// Parses a `schedstat` file: three numbers.
///
/// # Errors
/// When one of the three numbers is missing or not a number.
pub fn parse_schedstat(text: &str) -> Result<SchedStat, MalformedError> {
    let mut fields = text.split_ascii_whitespace();
    let mut next = |name| {
        fields
            .next()
            .and_then(|f| f.parse().ok())
            .ok_or(MalformedError::Field(name))
    };
    Ok(SchedStat {
        run_ns: next("run_ns")?,
        wait_ns: next("wait_ns")?,
        timeslices: next("timeslices")?,
    })
}

/// Reads `proc_root/<pid>/task/<tid>/schedstat`.
///
/// # Errors
/// When the file cannot be read (the thread is gone, or the kernel lacks
/// `CONFIG_SCHED_INFO`) or is malformed.
pub fn thread_schedstat(
    proc_root: &Path,
    pid: i32,
    tid: i32,
) -> Result<SchedStat, ReadThreadError> {
    read_and_parse(
        &task_file(proc_root, pid, tid, "schedstat"),
        parse_schedstat,
    )
}

/// The fields of a thread's `stat` file that we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadStat {
    /// The thread's name (field 2), without the parentheses; may contain spaces and
    /// parentheses itself.
    pub comm: String,
    /// Scheduler state (field 3): `R`, `S`, `D`...
    pub state: char,
    /// Minor page faults (field 10).
    pub minor_faults: u64,
    /// Major page faults (field 12).
    pub major_faults: u64,
    /// User-mode CPU time in clock ticks (field 14). For a vCPU thread this includes guest
    /// time.
    pub utime_ticks: u64,
    /// Kernel-mode CPU time in clock ticks (field 15).
    pub stime_ticks: u64,
    /// The CPU the thread last ran on (field 39, `processor`).
    pub processor: u32,
}

/// Parses a `stat` file. The command name (field 2) may contain anything, spaces and `)`
/// included, so the fields after it are found from the last `)`.
///
/// # Errors
/// When there is no `)` or a used field is missing or not a number.
pub fn parse_thread_stat(text: &str) -> Result<ThreadStat, MalformedError> {
    let open = text.find('(').ok_or(MalformedError::NoCommEnd)?;
    let close = text.rfind(')').ok_or(MalformedError::NoCommEnd)?;
    if close < open {
        return Err(MalformedError::NoCommEnd);
    }
    let comm = text[open + 1..close].to_owned();
    // Field n (1-based, as in proc(5)) is at index n - 3 after the command name.
    let rest: Vec<&str> = text[close + 1..].split_ascii_whitespace().collect();
    let field = |n: usize, name: &'static str| -> Result<&str, MalformedError> {
        rest.get(n - 3).copied().ok_or(MalformedError::Field(name))
    };
    let number = |n: usize, name: &'static str| -> Result<u64, MalformedError> {
        field(n, name)?
            .parse()
            .map_err(|_| MalformedError::Field(name))
    };
    let state = field(3, "state")?
        .chars()
        .next()
        .ok_or(MalformedError::Field("state"))?;
    let processor = field(39, "processor")?
        .parse()
        .map_err(|_| MalformedError::Field("processor"))?;
    Ok(ThreadStat {
        comm,
        state,
        minor_faults: number(10, "minflt")?,
        major_faults: number(12, "majflt")?,
        utime_ticks: number(14, "utime")?,
        stime_ticks: number(15, "stime")?,
        processor,
    })
}

/// Reads `proc_root/<pid>/task/<tid>/stat`.
///
/// # Errors
/// When the file cannot be read (the thread is gone) or is malformed.
pub fn thread_stat(proc_root: &Path, pid: i32, tid: i32) -> Result<ThreadStat, ReadThreadError> {
    read_and_parse(&task_file(proc_root, pid, tid, "stat"), parse_thread_stat)
}

/// The CPU the thread last ran on (field 39 of its `stat`).
///
/// # Errors
/// As [`thread_stat`].
pub fn thread_last_cpu(proc_root: &Path, pid: i32, tid: i32) -> Result<u32, ReadThreadError> {
    Ok(thread_stat(proc_root, pid, tid)?.processor)
}

/// The fields of a thread's `status` file that we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadStatus {
    /// CPUs the thread may run on (`Cpus_allowed_list`), sorted.
    pub cpus_allowed: Vec<u32>,
    /// Memory nodes the thread may allocate from (`Mems_allowed_list`), sorted; `None`
    /// without cpusets.
    pub mems_allowed: Option<Vec<u32>>,
    /// Context switches the thread asked for (blocking, sleeping).
    pub voluntary_ctxt_switches: Option<u64>,
    /// Context switches forced on the thread (preemption): CPU contention.
    pub nonvoluntary_ctxt_switches: Option<u64>,
}

/// Parses a `status` file.
///
/// # Errors
/// When `Cpus_allowed_list` is missing or one of the used fields is malformed.
pub fn parse_thread_status(text: &str) -> Result<ThreadStatus, MalformedError> {
    let value = |key: &str| {
        text.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k == key).then(|| v.trim())
        })
    };
    let list = |key: &'static str| -> Result<Option<Vec<u32>>, MalformedError> {
        value(key)
            .map(|v| parse_id_list(v).map_err(|source| MalformedError::List { field: key, source }))
            .transpose()
    };
    let count = |key: &'static str| -> Result<Option<u64>, MalformedError> {
        value(key)
            .map(|v| v.parse().map_err(|_| MalformedError::Field(key)))
            .transpose()
    };
    Ok(ThreadStatus {
        cpus_allowed: list("Cpus_allowed_list")?
            .ok_or(MalformedError::Field("Cpus_allowed_list"))?,
        mems_allowed: list("Mems_allowed_list")?,
        voluntary_ctxt_switches: count("voluntary_ctxt_switches")?,
        nonvoluntary_ctxt_switches: count("nonvoluntary_ctxt_switches")?,
    })
}

/// Reads `proc_root/<pid>/task/<tid>/status`.
///
/// # Errors
/// When the file cannot be read (the thread is gone) or is malformed.
pub fn thread_status(
    proc_root: &Path,
    pid: i32,
    tid: i32,
) -> Result<ThreadStatus, ReadThreadError> {
    read_and_parse(
        &task_file(proc_root, pid, tid, "status"),
        parse_thread_status,
    )
}

/// The CPUs the thread may run on (`Cpus_allowed_list` of its `status`).
///
/// # Errors
/// As [`thread_status`].
pub fn thread_allowed_cpus(
    proc_root: &Path,
    pid: i32,
    tid: i32,
) -> Result<Vec<u32>, ReadThreadError> {
    Ok(thread_status(proc_root, pid, tid)?.cpus_allowed)
}

fn read_and_parse<T>(
    path: &Path,
    parse: impl FnOnce(&str) -> Result<T, MalformedError>,
) -> Result<T, ReadThreadError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReadThreadError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse(&text).map_err(|source| ReadThreadError::Malformed {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real `stat` line with a name full of spaces and parentheses.
    const STAT: &str = "4242 (qemu) vcpu (0)) S 1 4242 4242 0 -1 4194624 1234 0 5 0 \
        777 88 0 0 20 0 9 0 123456 1000000 300 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 \
        0 -1 3 0 0 0 0 0 0 0 0 0 0 0 0 0\n";

    #[test]
    fn stat_parses_from_the_last_paren() {
        let stat = parse_thread_stat(STAT).expect("parses");
        assert_eq!(stat.comm, "qemu) vcpu (0)");
        assert_eq!(stat.state, 'S');
        assert_eq!((stat.minor_faults, stat.major_faults), (1234, 5));
        assert_eq!((stat.utime_ticks, stat.stime_ticks), (777, 88));
        assert_eq!(stat.processor, 3);
    }

    #[test]
    fn short_or_odd_stat_is_an_error() {
        assert_eq!(
            parse_thread_stat("12 (x) S 1 2 3"),
            Err(MalformedError::Field("processor"))
        );
        assert_eq!(parse_thread_stat("12 x S"), Err(MalformedError::NoCommEnd));
        assert_eq!(parse_thread_stat(") 12 (x"), Err(MalformedError::NoCommEnd));
        assert_eq!(parse_thread_stat(""), Err(MalformedError::NoCommEnd));
        let bad_cpu = STAT.replace(" -1 3 0", " -1 x 0");
        assert_eq!(
            parse_thread_stat(&bad_cpu),
            Err(MalformedError::Field("processor"))
        );
    }

    #[test]
    fn schedstat() {
        assert_eq!(
            parse_schedstat("40117377 30801128 97\n"),
            Ok(SchedStat {
                run_ns: 40_117_377,
                wait_ns: 30_801_128,
                timeslices: 97
            })
        );
        assert_eq!(
            parse_schedstat("1 2"),
            Err(MalformedError::Field("timeslices"))
        );
        assert_eq!(
            parse_schedstat("-1 2 3"),
            Err(MalformedError::Field("run_ns"))
        );
    }

    #[test]
    fn status() {
        let text = "Name:\tvcpu 0\nCpus_allowed:\t3\nCpus_allowed_list:\t0-1,4\n\
            Mems_allowed_list:\t0\nvoluntary_ctxt_switches:\t82\nnonvoluntary_ctxt_switches:\t15\n";
        let status = parse_thread_status(text).expect("parses");
        assert_eq!(status.cpus_allowed, [0, 1, 4]);
        assert_eq!(status.mems_allowed, Some(vec![0]));
        assert_eq!(status.voluntary_ctxt_switches, Some(82));
        assert_eq!(status.nonvoluntary_ctxt_switches, Some(15));
        assert_eq!(
            parse_thread_status("Name:\tx\n"),
            Err(MalformedError::Field("Cpus_allowed_list"))
        );
        assert!(matches!(
            parse_thread_status("Cpus_allowed_list:\t1-x\n"),
            Err(MalformedError::List {
                field: "Cpus_allowed_list",
                ..
            })
        ));
    }
}

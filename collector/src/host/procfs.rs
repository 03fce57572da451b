//! Reading the `/proc` files of a host sample: `stat`, `meminfo`, `loadavg`, `vmstat` and
//! `pressure/*`.
//!
//! procfs-core does the parsing where it fits. What it lacks is done here:
//! * every line is checked before procfs-core sees the file ([`check_lines`]), because its
//!   errors name neither the line nor the field, and its unit conversion overflows (a panic
//!   in debug builds) on absurd `meminfo` values;
//! * CPU numbers of the `cpuN` lines of `/proc/stat`, which procfs-core drops (it returns a
//!   list in file order, and offline CPUs have no line, so position is not the CPU number);
//! * `/proc/pressure/cpu` of kernels before 5.13 has no `full` line, which procfs-core's
//!   `CpuPressure` requires, so the pressure files are parsed line by line with its
//!   `parse_pressure_record`.

use std::path::Path;

use fleetmind_schema::MemorySample;
use procfs_core::{
    ExplicitSystemInfo, FromRead, FromReadSI, KernelStats, LoadAverage, Meminfo, VmStat,
    parse_pressure_record,
};

use super::error::{SampleError, check_lines, read_required};
use super::rates::Jiffies;

/// The CPU counters of `/proc/stat`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct CpuStat {
    /// The aggregate `cpu` line.
    pub total: Jiffies,
    /// One entry per `cpuN` line (online CPUs), sorted by CPU number.
    pub per_cpu: Vec<(u32, Jiffies)>,
    /// Context switches since boot (`ctxt`).
    pub ctxt: u64,
    /// Runnable tasks now (`procs_running`; 0 where the kernel does not say).
    pub procs_running: u32,
    /// Tasks blocked on I/O now (`procs_blocked`).
    pub procs_blocked: u32,
}

/// Reads `/proc/stat`.
pub(super) fn read_stat(proc_root: &Path) -> Result<CpuStat, SampleError> {
    let path = proc_root.join("stat");
    parse_stat(&path, &read_required(&path)?)
}

fn parse_stat(path: &Path, content: &str) -> Result<CpuStat, SampleError> {
    check_lines(path, content, stat_line_problem)?;
    // Only the jiffy counts are used; the tick rate procfs-core wants is never applied.
    let system = ExplicitSystemInfo {
        boot_time_secs: 0,
        ticks_per_second: 100,
        page_size: 4096,
        is_little_endian: cfg!(target_endian = "little"),
    };
    let stats = KernelStats::from_read(content.as_bytes(), &system)
        .map_err(|e| SampleError::incomplete(path, e.to_string()))?;
    // The same lines, in the same order, as procfs-core's `cpu_time`.
    let ids: Vec<u32> = content
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .filter_map(|l| {
            l.split_whitespace()
                .next()?
                .strip_prefix("cpu")?
                .parse()
                .ok()
        })
        .collect();
    if ids.len() != stats.cpu_time.len() {
        return Err(SampleError::incomplete(
            path,
            "per-CPU lines are not all `cpuN`",
        ));
    }
    if ids.is_empty() {
        return Err(SampleError::incomplete(path, "no per-CPU lines"));
    }
    let jiffies = |t: &procfs_core::CpuTime| Jiffies {
        user: t.user,
        nice: t.nice,
        system: t.system,
        idle: t.idle,
        iowait: t.iowait.unwrap_or(0),
        irq: t.irq.unwrap_or(0),
        softirq: t.softirq.unwrap_or(0),
        steal: t.steal.unwrap_or(0),
    };
    let mut per_cpu: Vec<(u32, Jiffies)> = ids
        .into_iter()
        .zip(stats.cpu_time.iter().map(jiffies))
        .collect();
    per_cpu.sort_by_key(|(id, _)| *id);
    Ok(CpuStat {
        total: jiffies(&stats.total),
        per_cpu,
        ctxt: stats.ctxt,
        procs_running: stats.procs_running.unwrap_or(0),
        procs_blocked: stats.procs_blocked.unwrap_or(0),
    })
}

fn stat_line_problem(line: &str) -> Option<&'static str> {
    let mut tokens = line.split_whitespace();
    let key = tokens.next()?;
    if let Some(id) = key.strip_prefix("cpu") {
        if !id.is_empty() && id.parse::<u32>().is_err() {
            return Some("CPU line without a CPU number");
        }
        // procfs-core reads at most ten counters and needs the first four.
        let counters: Vec<&str> = tokens.take(10).collect();
        if counters.len() < 4 {
            return Some("CPU line with fewer than 4 counters");
        }
        if counters.iter().any(|c| c.parse::<u64>().is_err()) {
            return Some("CPU counter is not an unsigned integer");
        }
    } else if matches!(
        key,
        "ctxt" | "btime" | "processes" | "procs_running" | "procs_blocked"
    ) && tokens.next().and_then(|v| v.parse::<u64>().ok()).is_none()
    {
        return Some("value is not an unsigned integer");
    }
    None
}

/// Reads `/proc/meminfo`.
pub(super) fn read_meminfo(proc_root: &Path) -> Result<MemorySample, SampleError> {
    let path = proc_root.join("meminfo");
    parse_meminfo(&path, &read_required(&path)?)
}

/// The `meminfo` keys a [`MemorySample`] cannot do without.
const MEMINFO_REQUIRED: [&str; 6] = [
    "MemTotal:",
    "MemFree:",
    "Buffers:",
    "Cached:",
    "SwapTotal:",
    "SwapFree:",
];

fn parse_meminfo(path: &Path, content: &str) -> Result<MemorySample, SampleError> {
    check_lines(path, content, meminfo_line_problem)?;
    for key in MEMINFO_REQUIRED {
        if !content
            .lines()
            .any(|l| l.split_whitespace().next() == Some(key))
        {
            return Err(SampleError::incomplete(path, format!("no {key} line")));
        }
    }
    let m = Meminfo::from_read(content.as_bytes())
        .map_err(|e| SampleError::incomplete(path, e.to_string()))?;
    // MemAvailable appeared in 3.14; before it, free + buffers + page cache is the estimate.
    let available = m.mem_available.unwrap_or_else(|| {
        m.mem_free
            .saturating_add(m.buffers)
            .saturating_add(m.cached)
    });
    let used_frac = if m.mem_total == 0 {
        0.0
    } else {
        m.mem_total.saturating_sub(available) as f64 / m.mem_total as f64
    };
    Ok(MemorySample {
        total_bytes: m.mem_total,
        free_bytes: m.mem_free,
        available_bytes: available,
        cached_bytes: m.buffers.saturating_add(m.cached),
        used_frac,
        swap_total_bytes: m.swap_total,
        swap_free_bytes: m.swap_free,
        hugepages_total: m.hugepages_total.unwrap_or(0),
        hugepages_free: m.hugepages_free.unwrap_or(0),
        hugepage_size_bytes: m.hugepagesize.unwrap_or(0),
    })
}

/// `Key: value [unit]`, as procfs-core reads it, with a value that fits in bytes.
fn meminfo_line_problem(line: &str) -> Option<&'static str> {
    if line.is_empty() {
        return None;
    }
    let mut tokens = line.split_whitespace();
    let Some(key) = tokens.next() else {
        return Some("blank line");
    };
    if !key.ends_with(':') {
        return Some("expected `Key: value [unit]`");
    }
    let Some(Ok(value)) = tokens.next().map(str::parse::<u64>) else {
        return Some("value is not an unsigned integer");
    };
    let scale: u64 = match tokens.next() {
        None | Some("B") => 1,
        Some("KiB" | "kiB" | "kB" | "KB") => 1 << 10,
        Some("MiB" | "miB" | "MB" | "mB") => 1 << 20,
        Some("GiB" | "giB" | "GB" | "gB") => 1 << 30,
        Some(_) => return Some("unknown unit"),
    };
    value
        .checked_mul(scale)
        .is_none()
        .then_some("value too large")
}

/// Reads the 1-minute load average from `/proc/loadavg`.
pub(super) fn read_load1(proc_root: &Path) -> Result<f64, SampleError> {
    let path = proc_root.join("loadavg");
    parse_load1(&path, &read_required(&path)?)
}

fn parse_load1(path: &Path, content: &str) -> Result<f64, SampleError> {
    let line = content.lines().next().unwrap_or_default();
    let load = LoadAverage::from_read(content.as_bytes()).map_err(|_| {
        SampleError::malformed(path, 1, line, "expected `1m 5m 15m running/total last-pid`")
    })?;
    let load1 = widen(load.one);
    if !is_finite_non_negative(load1) {
        return Err(SampleError::malformed(
            path,
            1,
            line,
            "load is not a finite non-negative number",
        ));
    }
    Ok(load1)
}

/// The `/proc/vmstat` counters a host sample reports as rates; a key the kernel does not
/// have (`numa_miss` without `CONFIG_NUMA`) reads as 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct VmCounters {
    pub pgfault: u64,
    pub pgmajfault: u64,
    pub pswpin: u64,
    pub pswpout: u64,
    pub numa_miss: u64,
}

/// Reads `/proc/vmstat`.
pub(super) fn read_vmstat(proc_root: &Path) -> Result<VmCounters, SampleError> {
    let path = proc_root.join("vmstat");
    parse_vmstat(&path, &read_required(&path)?)
}

fn parse_vmstat(path: &Path, content: &str) -> Result<VmCounters, SampleError> {
    check_lines(path, content, |line| {
        let mut tokens = line.split_whitespace();
        match (tokens.next(), tokens.next().map(str::parse::<i64>)) {
            (Some(_), Some(Ok(_))) => None,
            (None, _) => Some("blank line"),
            _ => Some("expected `name value`"),
        }
    })?;
    let VmStat(map) = VmStat::from_read(content.as_bytes())
        .map_err(|e| SampleError::incomplete(path, e.to_string()))?;
    let get = |key: &str| map.get(key).map_or(0, |v| u64::try_from(*v).unwrap_or(0));
    Ok(VmCounters {
        pgfault: get("pgfault"),
        pgmajfault: get("pgmajfault"),
        pswpin: get("pswpin"),
        pswpout: get("pswpout"),
        numa_miss: get("numa_miss"),
    })
}

/// One `some` or `full` line of a pressure file.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct StallRecord {
    /// Percentage of the last 10 s stalled.
    pub avg10: f64,
    /// Cumulative stall time, microseconds.
    pub total_us: u64,
}

/// One pressure file.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Pressure {
    pub some: StallRecord,
    /// Absent from `cpu` before Linux 5.13.
    pub full: Option<StallRecord>,
}

/// The three pressure files.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct PsiReading {
    pub cpu: Pressure,
    pub memory: Pressure,
    pub io: Pressure,
}

/// Reads `/proc/pressure/{cpu,memory,io}`: `None` when any of them cannot be read (no PSI in
/// the kernel, or `psi=0`, where reads fail with EOPNOTSUPP).
pub(super) fn read_psi(proc_root: &Path) -> Result<Option<PsiReading>, SampleError> {
    let dir = proc_root.join("pressure");
    let mut files = [Pressure::default(); 3];
    for (slot, name) in files.iter_mut().zip(["cpu", "memory", "io"]) {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(content) => *slot = parse_pressure(&path, &content)?,
            Err(error) => {
                tracing::debug!(path = %path.display(), %error, "no pressure stall information");
                return Ok(None);
            }
        }
    }
    let [cpu, memory, io] = files;
    Ok(Some(PsiReading { cpu, memory, io }))
}

fn parse_pressure(path: &Path, content: &str) -> Result<Pressure, SampleError> {
    let mut some = None;
    let mut full = None;
    for (index, line) in content.lines().enumerate() {
        // `parse_pressure_record` slices from byte 5, so only hand it lines that have one.
        let slot = if line.starts_with("some ") {
            &mut some
        } else if line.starts_with("full ") {
            &mut full
        } else if line.trim().is_empty() {
            continue;
        } else {
            return Err(SampleError::malformed(
                path,
                index + 1,
                line,
                "expected a `some` or `full` line",
            ));
        };
        let record = parse_pressure_record(line).map_err(|_| {
            SampleError::malformed(
                path,
                index + 1,
                line,
                "expected `avg10= avg60= avg300= total=`",
            )
        })?;
        let avg10 = widen(record.avg10);
        if !is_finite_non_negative(avg10) {
            return Err(SampleError::malformed(
                path,
                index + 1,
                line,
                "avg10 is not a percentage",
            ));
        }
        *slot = Some(StallRecord {
            avg10,
            total_us: record.total,
        });
    }
    let some = some.ok_or_else(|| SampleError::incomplete(path, "no `some` line"))?;
    Ok(Pressure { some, full })
}

/// Rust's float parsing accepts `nan` and `inf`, which no kernel writes and no sample may carry.
fn is_finite_non_negative(value: f64) -> bool {
    value.is_finite() && value >= 0.0
}

/// Widens a value procfs-core parsed as `f32` to the `f64` closest to the same decimal text,
/// so that `0.72` stays `0.72` rather than becoming `0.7200000286102295`.
fn widen(value: f32) -> f64 {
    value
        .to_string()
        .parse()
        .unwrap_or_else(|_| f64::from(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  30 0 10 100 2 0 1 3 0 0\n\
        cpu0 10 0 5 50 1 0 1 0 0 0\n\
        cpu3 20 0 5 50 1 0 0 3 0 0\n\
        intr 1 2 3\nctxt 5\nbtime 1700000000\nprocesses 9\nprocs_running 1\nprocs_blocked 0\n";

    #[test]
    fn stat_keeps_cpu_numbers_across_offline_gaps() {
        let stat = parse_stat(Path::new("stat"), STAT).expect("parses");
        let ids: Vec<u32> = stat.per_cpu.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [0, 3]);
        assert_eq!(stat.per_cpu[1].1.steal, 3);
        assert_eq!(stat.total.user, 30);
    }

    #[test]
    fn stat_garbage_counter_names_the_line() {
        let bad = STAT.replace("cpu3 20", "cpu3 2x");
        let err = parse_stat(Path::new("stat"), &bad).expect_err("bad counter");
        assert!(
            matches!(err, SampleError::Malformed { line_no: 3, .. }),
            "{err}"
        );
    }

    #[test]
    fn stat_without_ctxt_is_incomplete() {
        let bad = STAT.replace("ctxt 5\n", "");
        let err = parse_stat(Path::new("stat"), &bad).expect_err("no ctxt");
        assert!(matches!(err, SampleError::Incomplete { .. }), "{err}");
    }

    #[test]
    fn meminfo_value_overflowing_bytes_is_an_error_not_a_panic() {
        let err = meminfo_line_problem("MemTotal: 18446744073709551615 kB");
        assert_eq!(err, Some("value too large"));
        assert_eq!(meminfo_line_problem("HugePages_Total:       0"), None);
        assert_eq!(
            meminfo_line_problem("MemTotal 5 kB"),
            Some("expected `Key: value [unit]`")
        );
    }

    #[test]
    fn meminfo_without_a_needed_key_names_it() {
        let err = parse_meminfo(Path::new("meminfo"), "MemFree: 1 kB\n").expect_err("no total");
        assert_eq!(err.to_string(), "meminfo: no MemTotal: line");
    }

    #[test]
    fn loadavg_keeps_its_decimal_value() {
        let load = parse_load1(Path::new("loadavg"), "0.72 0.90 0.44 1/85 7640\n").expect("ok");
        assert_eq!(load, 0.72);
        for bad in ["high\n", "inf 0.90 0.44 1/85 7640\n"] {
            let err = parse_load1(Path::new("loadavg"), bad).expect_err(bad);
            assert!(
                matches!(err, SampleError::Malformed { line_no: 1, .. }),
                "{err}"
            );
        }
    }

    #[test]
    fn vmstat_missing_and_negative_keys_read_as_zero() {
        let v = parse_vmstat(Path::new("vmstat"), "pgfault 42\nnuma_miss -3\n").expect("ok");
        assert_eq!(v.pgfault, 42);
        assert_eq!(v.numa_miss, 0);
        assert_eq!(v.pswpout, 0);
        let err = parse_vmstat(Path::new("vmstat"), "pgfault 42\npgmajfault\n").expect_err("bad");
        assert!(
            matches!(err, SampleError::Malformed { line_no: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn cpu_pressure_before_5_13_has_no_full_line() {
        let p = parse_pressure(
            Path::new("cpu"),
            "some avg10=1.50 avg60=0.50 avg300=0.10 total=123\n",
        )
        .expect("ok");
        assert_eq!(p.some.avg10, 1.5);
        assert_eq!(p.some.total_us, 123);
        assert_eq!(p.full, None);
    }

    #[test]
    fn short_pressure_lines_are_errors_not_panics() {
        for bad in [
            "some",
            "full x",
            "some avg10=1",
            "bogus 1",
            "some avg10=nan avg60=0 avg300=0 total=1",
            "some avg10=-1 avg60=0 avg300=0 total=1",
        ] {
            let err = parse_pressure(Path::new("io"), bad).expect_err(bad);
            assert!(matches!(err, SampleError::Malformed { .. }), "{bad}: {err}");
        }
    }
}

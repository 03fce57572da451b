//! `fleetmind bench collect`: what collecting costs, in CPU-seconds per 1,000 values, so it can
//! be set beside another agent (Prometheus node_exporter; `scripts/bench-collector-overhead`
//! runs both).
//!
//! The benchmark runs the two collectors of an agent in this process, on one thread (a
//! current-thread runtime), for `--duration` at `--interval`: the host collector
//! ([`HostCollector`] on `/proc` and `/sys`) and the VM collector's pieces for the built-in VMM
//! hosts ([`BuiltinSource`] per socket of `--socket-dir`, then a [`RateTracker`]), each tick the
//! host first, then every VMM host in turn. Nothing is stored or sent.
//!
//! What is counted, and how:
//! * **Values**: every number and boolean leaf of each produced record's JSON form (serde_json
//!   of the [`Record`]). Timestamps, intervals, indices, thread ids and the CPUs of affinity
//!   lists are numbers and count; strings (names, the `kind` tag) and nulls (absent optional
//!   values) do not. A Prometheus sample line is the nearest equivalent.
//! * **CPU of the process**: user + system time of this process (`/proc/self/stat`, all
//!   threads) from the first measured tick to the end, nothing subtracted. Start-up and the
//!   priming read (rates need two readings) come before that window, as node_exporter's
//!   start-up comes before its scrapes are measured.
//! * **CPU per collector**: the calling thread's CPU clock (`/proc/thread-self/schedstat`,
//!   nanoseconds; `/proc/thread-self/stat` ticks where schedstat is missing) around the host
//!   step and the VM step of every tick. The runtime has this one thread, so the HTTP client's
//!   work on the socket is in the VM step. schedstat alone lags: the kernel updates a running
//!   thread's runtime on ticks and context switches, so each reading first reads
//!   `/proc/self/stat`, which updates the calling thread. Those readings cost CPU too (a few
//!   microseconds each); their estimated total is printed, and is left in every figure.
//!   Turning records into JSON to count their values is timed apart (it is the benchmark's
//!   bookkeeping; the daemon does similar work to store records) and is part of the process
//!   total only.
//! * **CPU of the VMM hosts**: answering `GET /vmm/v1/stats` costs them CPU, which is part of
//!   collecting VM values. Their user + system time over the same window (`/proc/<pid>/stat`;
//!   pids from each socket's peer credentials, or `--vmm-pid`) is reported apart, because it
//!   includes running the guests. It is split into the vCPU threads (the guests, by the thread
//!   ids the stats answers give) and the other threads (control API, demo driver); with
//!   `--vmm-baseline` the other threads are first measured without requests, which gives an
//!   estimate of the extra CPU the requests cost.

use std::collections::{BTreeSet, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use fleetmind_collector::vm::builtin::{BuiltinSource, discover};
use fleetmind_collector::vm::{RateTracker, VmSource as _};
use fleetmind_collector::{HostCollector, HostCollectorConfig};
use fleetmind_schema::Record;
use serde_json::Value;
use tokio::time::MissedTickBehavior;

use crate::cli::SocketDirArgs;

/// Options of `fleetmind bench collect`.
#[derive(Debug, Args)]
pub struct BenchCollectArgs {
    /// Directory of the VMM hosts' control sockets (`*.sock`); by default the daemon's
    /// (`vmm.socket_dir`, or `<data_dir>/vmm`).
    #[arg(long)]
    pub socket_dir: Option<PathBuf>,
    /// How long to measure, e.g. `60s`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub duration: Duration,
    /// Collection interval, e.g. `1s`, `500ms`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub interval: Duration,
    /// How long one stats request may take.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    pub timeout: Duration,
    /// VMM host process to measure (repeatable); by default the process serving each socket.
    #[arg(long = "vmm-pid")]
    pub vmm_pids: Vec<u32>,
    /// Before measuring, watch the VMM hosts' non-vCPU threads this long without requests, to
    /// estimate what the requests add (`0s`: no baseline).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub vmm_baseline: Duration,
    /// Also print the figures as `key=value` lines (for scripts).
    #[arg(long)]
    pub kv: bool,
}

/// `fleetmind bench collect`.
///
/// # Errors
///
/// When the socket directory cannot be resolved, the runtime cannot start, or this process's
/// CPU time cannot be read.
pub fn run(args: &BenchCollectArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.interval.is_zero(), "--interval must be more than 0");
    anyhow::ensure!(
        args.duration >= args.interval,
        "--duration must be at least one --interval"
    );
    let socket_dir = match &args.socket_dir {
        Some(dir) => dir.clone(),
        None => crate::vmm_host::socket_dir(&SocketDirArgs::default())?,
    };
    // One thread: the per-collector figures come from this thread's CPU clock.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(measure(args, &socket_dir))
}

/// One VMM host's socket, read as the VM collector reads it.
#[derive(Debug)]
struct VmmSocket {
    path: PathBuf,
    source: BuiltinSource,
    tracker: RateTracker,
    errors: u64,
    last_error: Option<String>,
}

/// Samples, values and thread CPU of one collector over the window.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    samples: u64,
    values: u64,
    cpu_ns: u64,
    errors: u64,
}

async fn measure(args: &BenchCollectArgs, socket_dir: &Path) -> anyhow::Result<()> {
    let clock = ThreadClock::detect();
    let tck = clock_ticks_per_second();
    let mut sockets = Vec::new();
    for path in discover(socket_dir) {
        let source = BuiltinSource::new(path.clone(), args.timeout)
            .with_context(|| format!("cannot read {}", path.display()))?;
        sockets.push(VmmSocket {
            path,
            source,
            tracker: RateTracker::new(),
            errors: 0,
            last_error: None,
        });
    }
    if sockets.is_empty() {
        eprintln!(
            "fleetmind bench collect: no VMM host sockets in {}; measuring the host collector only",
            socket_dir.display()
        );
    }
    let vmm_pids = if args.vmm_pids.is_empty() {
        peer_pids(&sockets).await
    } else {
        args.vmm_pids.clone()
    };
    let proc_root = Path::new("/proc");
    let mut host = HostCollector::new(HostCollectorConfig::local(fleetmind_collector::hostname(
        proc_root,
    )));

    // Prime: rates need a previous reading. Not measured.
    host.sample(fleetmind_schema::now_ms())
        .context("the host collector cannot read this host")?;
    let mut tids = BTreeSet::new();
    let mut vms = 0usize;
    for socket in &mut sockets {
        match socket.source.read().await {
            Ok(readings) => {
                vms += readings.len();
                for reading in readings {
                    tids.extend(reading.vcpus.iter().filter_map(|v| v.tid));
                    let _ = socket.tracker.update(reading);
                }
            }
            Err(e) => eprintln!("fleetmind bench collect: priming read failed: {e}"),
        }
    }
    let vcpu_tids: BTreeSet<(u32, u32)> = vcpu_threads(&tids, &vmm_pids).into_iter().collect();

    let baseline = if args.vmm_baseline.is_zero() || vmm_pids.is_empty() {
        None
    } else {
        println!(
            "fleetmind bench collect: VMM baseline for {} (no requests)",
            humantime::format_duration(args.vmm_baseline)
        );
        let before = vmm_cpu(&vmm_pids, &vcpu_tids);
        let started = Instant::now();
        tokio::time::sleep(args.vmm_baseline).await;
        let after = vmm_cpu(&vmm_pids, &vcpu_tids);
        Some((after.since(&before), started.elapsed()))
    };

    let probe_ns = probe_cost_ns(clock, tck);

    let ticks = u64::try_from(args.duration.as_nanos() / args.interval.as_nanos())
        .unwrap_or(u64::MAX)
        .max(1);
    println!(
        "fleetmind bench collect: measuring for {} ({ticks} ticks of {})",
        humantime::format_duration(args.duration),
        humantime::format_duration(args.interval)
    );
    let mut ticker = tokio::time::interval(args.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The first tick of an interval is immediate; the priming read was just now.
    ticker.tick().await;

    let mut host_tally = Tally::default();
    let mut vm_tally = Tally::default();
    let mut counting_ns = 0u64;
    let process_start = process_cpu_ticks(Path::new("/proc/self"))
        .context("cannot read this process's CPU time")?;
    let vmm_start = vmm_cpu(&vmm_pids, &vcpu_tids);
    let thread_start = clock.now_ns(tck);
    let started = Instant::now();
    let mut records: Vec<Record> = Vec::new();
    for _ in 0..ticks {
        ticker.tick().await;
        records.clear();

        let t0 = clock.now_ns(tck);
        match host.sample(fleetmind_schema::now_ms()) {
            Ok(Some(sample)) => records.push(Record::HostSample(sample)),
            Ok(None) => {}
            Err(_) => host_tally.errors += 1,
        }
        let host_records = records.len();
        let t1 = clock.now_ns(tck);
        for socket in &mut sockets {
            match socket.source.read().await {
                Ok(readings) => {
                    let live: HashSet<String> = readings.iter().map(|r| r.vm.clone()).collect();
                    socket.tracker.retain(&live);
                    for reading in readings {
                        if let Some(sample) = socket.tracker.update(reading) {
                            records.push(Record::VmSample(sample));
                        }
                    }
                }
                Err(e) => {
                    socket.errors += 1;
                    socket.last_error = Some(e.message);
                }
            }
        }
        let t2 = clock.now_ns(tck);
        for (i, record) in records.iter().enumerate() {
            let values = serde_json::to_value(record).map_or(0, |v| count_values(&v));
            let tally = if i < host_records {
                &mut host_tally
            } else {
                &mut vm_tally
            };
            tally.samples += 1;
            tally.values += values;
        }
        let t3 = clock.now_ns(tck);
        host_tally.cpu_ns += t1.saturating_sub(t0);
        vm_tally.cpu_ns += t2.saturating_sub(t1);
        counting_ns += t3.saturating_sub(t2);
    }
    let wall = started.elapsed();
    let thread_ns = clock.now_ns(tck).saturating_sub(thread_start);
    let process_end = process_cpu_ticks(Path::new("/proc/self"))
        .context("cannot read this process's CPU time")?;
    let vmm = vmm_cpu(&vmm_pids, &vcpu_tids).since(&vmm_start);
    vm_tally.errors = sockets.iter().map(|s| s.errors).sum();

    let report = Report {
        socket_dir,
        sockets: &sockets,
        vms,
        ticks,
        interval: args.interval,
        wall,
        host: host_tally,
        vm: vm_tally,
        counting_ns,
        thread_ns,
        clock,
        probes: 3 * ticks + 2,
        probe_ns,
        process_s: ticks_to_s(process_end.saturating_sub(process_start), tck),
        tck,
        vmm_pids: &vmm_pids,
        vmm,
        baseline,
    };
    print!("{}", report.text());
    if args.kv {
        print!("{}", report.kv());
    }
    Ok(())
}

/// CPU nanoseconds one reading of the thread clock costs (the mean of a few hundred).
fn probe_cost_ns(clock: ThreadClock, tck: u64) -> u64 {
    const PROBES: u64 = 200;
    let start = clock.now_ns(tck);
    for _ in 0..PROBES {
        let _ = clock.now_ns(tck);
    }
    clock.now_ns(tck).saturating_sub(start) / PROBES
}

/// Number and boolean leaves of a JSON value (the module docs give the rule).
fn count_values(value: &Value) -> u64 {
    match value {
        Value::Number(_) | Value::Bool(_) => 1,
        Value::Array(items) => items.iter().map(count_values).sum(),
        Value::Object(fields) => fields.values().map(count_values).sum(),
        Value::Null | Value::String(_) => 0,
    }
}

/// The pids of the processes serving `sockets` (SO_PEERCRED of a fresh connection).
async fn peer_pids(sockets: &[VmmSocket]) -> Vec<u32> {
    let mut pids = Vec::new();
    for socket in sockets {
        let pid = match tokio::net::UnixStream::connect(&socket.path).await {
            Ok(stream) => stream
                .peer_cred()
                .ok()
                .and_then(|cred| cred.pid())
                .and_then(|pid| u32::try_from(pid).ok()),
            Err(_) => None,
        };
        match pid {
            Some(pid) if !pids.contains(&pid) => pids.push(pid),
            Some(_) => {}
            None => eprintln!(
                "fleetmind bench collect: no pid for {}; pass --vmm-pid to measure it",
                socket.path.display()
            ),
        }
    }
    pids
}

/// `(pid, tid)` of the vCPU threads `tids` (from the stats answers) among the threads of `pids`.
fn vcpu_threads(tids: &BTreeSet<u32>, pids: &[u32]) -> Vec<(u32, u32)> {
    tids.iter()
        .filter_map(|&tid| {
            pids.iter()
                .find(|pid| Path::new(&format!("/proc/{pid}/task/{tid}")).exists())
                .map(|&pid| (pid, tid))
        })
        .collect()
}

/// CPU ticks of the VMM hosts at one instant.
#[derive(Debug, Default, Clone, Copy)]
struct VmmCpu {
    total: u64,
    vcpus: u64,
}

impl VmmCpu {
    fn since(&self, earlier: &VmmCpu) -> VmmCpu {
        VmmCpu {
            total: self.total.saturating_sub(earlier.total),
            vcpus: self.vcpus.saturating_sub(earlier.vcpus),
        }
    }

    fn other(&self) -> u64 {
        self.total.saturating_sub(self.vcpus)
    }
}

/// User + system ticks of `pids`, and of their vCPU threads (a thread that is gone reads 0;
/// the demo fleet keeps its VMs for the whole run).
fn vmm_cpu(pids: &[u32], vcpu_tids: &BTreeSet<(u32, u32)>) -> VmmCpu {
    let mut cpu = VmmCpu::default();
    for pid in pids {
        cpu.total += process_cpu_ticks(Path::new(&format!("/proc/{pid}"))).unwrap_or(0);
    }
    for (pid, tid) in vcpu_tids {
        cpu.vcpus += process_cpu_ticks(Path::new(&format!("/proc/{pid}/task/{tid}"))).unwrap_or(0);
    }
    cpu
}

/// `utime + stime` (fields 14 and 15) of `<dir>/stat`, in clock ticks.
fn process_cpu_ticks(dir: &Path) -> anyhow::Result<u64> {
    let path = dir.join("stat");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    parse_stat_cpu(&text).with_context(|| format!("{}: unexpected format", path.display()))
}

/// `utime + stime` of a `/proc/<pid>/stat` line. The command name (field 2) is in
/// parentheses and may hold spaces and parentheses, so fields are counted after the last `)`.
fn parse_stat_cpu(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // After the `)`, field 3 (state) is the first; utime is field 14.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second of `/proc/*/stat` (`USER_HZ`), from the `AT_CLKTCK` entry of this
/// process's auxiliary vector; 100 (Linux's value on every common architecture) if unreadable.
fn clock_ticks_per_second() -> u64 {
    const AT_CLKTCK: u64 = 17;
    std::fs::read("/proc/self/auxv")
        .ok()
        .and_then(|auxv| auxv_value(&auxv, AT_CLKTCK))
        .filter(|&hz| hz > 0)
        .unwrap_or(100)
}

/// The value of entry `key` of an auxiliary vector (pairs of native-endian words).
fn auxv_value(auxv: &[u8], key: u64) -> Option<u64> {
    const WORD: usize = std::mem::size_of::<usize>();
    let word = |bytes: &[u8]| -> Option<u64> {
        let array: [u8; WORD] = bytes.try_into().ok()?;
        u64::try_from(usize::from_ne_bytes(array)).ok()
    };
    auxv.chunks_exact(2 * WORD).find_map(|pair| {
        let (k, v) = pair.split_at(WORD);
        (word(k)? == key).then(|| word(v)).flatten()
    })
}

fn ticks_to_s(ticks: u64, tck: u64) -> f64 {
    ticks as f64 / tck as f64
}

/// This thread's CPU clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ThreadClock {
    /// `/proc/thread-self/schedstat`, first field: nanoseconds on a CPU.
    Schedstat,
    /// `/proc/thread-self/stat`, utime + stime in ticks (coarse, but always there).
    StatTicks,
}

impl ThreadClock {
    fn detect() -> Self {
        if read_schedstat_ns().is_some() {
            Self::Schedstat
        } else {
            Self::StatTicks
        }
    }

    fn now_ns(self, tck: u64) -> u64 {
        match self {
            Self::Schedstat => {
                // The kernel brings the running thread's runtime up to date on a tick or a
                // context switch, not when schedstat is read; reading this process's stat
                // does (thread_group_cputime updates the calling task), so read it first.
                let _ = std::fs::read("/proc/self/stat");
                read_schedstat_ns().unwrap_or(0)
            }
            Self::StatTicks => process_cpu_ticks(Path::new("/proc/thread-self"))
                .map_or(0, |t| t.saturating_mul(1_000_000_000) / tck),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Schedstat => {
                "/proc/thread-self/schedstat in ns, brought up to date by reading /proc/self/stat"
            }
            Self::StatTicks => "/proc/thread-self/stat, ticks",
        }
    }
}

fn read_schedstat_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Everything measured, for printing.
#[derive(Debug)]
struct Report<'a> {
    socket_dir: &'a Path,
    sockets: &'a [VmmSocket],
    vms: usize,
    ticks: u64,
    interval: Duration,
    wall: Duration,
    host: Tally,
    vm: Tally,
    counting_ns: u64,
    thread_ns: u64,
    clock: ThreadClock,
    /// Readings of the thread clock in the window, and what one costs.
    probes: u64,
    probe_ns: u64,
    process_s: f64,
    tck: u64,
    vmm_pids: &'a [u32],
    vmm: VmmCpu,
    baseline: Option<(VmmCpu, Duration)>,
}

/// CPU-seconds per 1,000 values; NaN when nothing was collected.
fn per_1000(cpu_s: f64, values: u64) -> f64 {
    if values == 0 {
        f64::NAN
    } else {
        cpu_s * 1000.0 / values as f64
    }
}

fn ns_to_s(ns: u64) -> f64 {
    ns as f64 / 1e9
}

impl Report<'_> {
    fn total_values(&self) -> u64 {
        self.host.values + self.vm.values
    }

    /// Estimated CPU the requests cost the VMM hosts: their non-vCPU threads over the window,
    /// less the same threads' baseline rate.
    fn vmm_request_estimate_s(&self) -> Option<f64> {
        let (baseline, length) = self.baseline?;
        let rate = ticks_to_s(baseline.other(), self.tck) / length.as_secs_f64();
        Some(ticks_to_s(self.vmm.other(), self.tck) - rate * self.wall.as_secs_f64())
    }

    fn text(&self) -> String {
        let mut out = String::new();
        let hosts: Vec<String> = self
            .sockets
            .iter()
            .map(|s| {
                s.path
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
            })
            .collect();
        let _ = writeln!(
            out,
            "fleetmind bench collect: {} ticks of {} in {:.1} s; host collector on /proc and /sys, VM collector on {} VMM host(s) with {} VMs in {} ({})",
            self.ticks,
            humantime::format_duration(self.interval),
            self.wall.as_secs_f64(),
            self.sockets.len(),
            self.vms,
            self.socket_dir.display(),
            hosts.join(", ")
        );
        let _ = writeln!(
            out,
            "values: the number and boolean leaves of each record's JSON form (serde_json of fleetmind_schema::Record): ts, interval_ms, indices, tids and affinity CPUs count; strings and nulls do not"
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<10} {:>8} {:>9} {:>7} {:>10} {:>22}",
            "collector", "samples", "values", "errors", "cpu_s", "cpu_s per 1000 values"
        );
        for (name, t) in [("host", self.host), ("vm", self.vm)] {
            let cpu_s = ns_to_s(t.cpu_ns);
            let _ = writeln!(
                out,
                "{name:<10} {:>8} {:>9} {:>7} {:>10.4} {:>22.6}",
                t.samples,
                t.values,
                t.errors,
                cpu_s,
                per_1000(cpu_s, t.values)
            );
        }
        let both_s = ns_to_s(self.host.cpu_ns + self.vm.cpu_ns);
        let _ = writeln!(
            out,
            "{:<10} {:>8} {:>9} {:>7} {:>10.4} {:>22.6}",
            "both",
            self.host.samples + self.vm.samples,
            self.total_values(),
            self.host.errors + self.vm.errors,
            both_s,
            per_1000(both_s, self.total_values())
        );
        let _ = writeln!(
            out,
            "  (per collector: this thread's CPU clock around each step, {}; the runtime has one thread)",
            self.clock.describe()
        );
        for socket in self.sockets.iter().filter(|s| s.errors > 0) {
            let _ = writeln!(
                out,
                "  {}: {} failed reads, last: {}",
                socket.path.display(),
                socket.errors,
                socket.last_error.as_deref().unwrap_or("")
            );
        }
        let _ = writeln!(
            out,
            "counting values (serde_json::to_value and walk, bookkeeping): {:.4} s thread CPU; thread total {:.4} s",
            ns_to_s(self.counting_ns),
            ns_to_s(self.thread_ns)
        );
        let _ = writeln!(
            out,
            "clock readings (bench instrumentation): {} x {:.1} us = {:.4} s, in the steps above and the process total",
            self.probes,
            self.probe_ns as f64 / 1e3,
            ns_to_s(self.probes.saturating_mul(self.probe_ns))
        );
        let _ = writeln!(
            out,
            "\nfleetmind process: {:.3} CPU-s (user+system, /proc/self/stat at 1/{} s, nothing subtracted) for {} values = {:.6} CPU-s per 1000 values",
            self.process_s,
            self.tck,
            self.total_values(),
            per_1000(self.process_s, self.total_values())
        );
        if self.vmm_pids.is_empty() {
            let _ = writeln!(out, "VMM hosts: none measured");
            return out;
        }
        let pids: Vec<String> = self.vmm_pids.iter().map(u32::to_string).collect();
        let _ = writeln!(
            out,
            "VMM hosts (pids {}), reported apart: {:.3} CPU-s over the same window; this INCLUDES RUNNING THE GUESTS, not only answering the stats requests",
            pids.join(", "),
            ticks_to_s(self.vmm.total, self.tck)
        );
        let _ = writeln!(
            out,
            "  vCPU threads (the guests): {:.3} CPU-s; other threads (control API answering the requests, demo driver): {:.3} CPU-s",
            ticks_to_s(self.vmm.vcpus, self.tck),
            ticks_to_s(self.vmm.other(), self.tck)
        );
        match (self.vmm_request_estimate_s(), self.baseline) {
            (Some(extra), Some((baseline, length))) => {
                let _ = writeln!(
                    out,
                    "  other threads without requests: {:.3} CPU-s in {:.1} s; so the requests cost about {:.3} CPU-s = {:.6} CPU-s per 1000 VM values (estimate; 1/{} s ticks)",
                    ticks_to_s(baseline.other(), self.tck),
                    length.as_secs_f64(),
                    extra,
                    per_1000(extra, self.vm.values),
                    self.tck
                );
            }
            _ => {
                let _ = writeln!(
                    out,
                    "  (no baseline: pass --vmm-baseline 10s to estimate what the requests alone cost)"
                );
            }
        }
        out
    }

    fn kv(&self) -> String {
        let mut out = String::new();
        let mut put = |key: &str, value: String| {
            let _ = writeln!(out, "{key}={value}");
        };
        put("ticks", self.ticks.to_string());
        put("wall_s", format!("{:.3}", self.wall.as_secs_f64()));
        put("vms", self.vms.to_string());
        for (name, t) in [("host", self.host), ("vm", self.vm)] {
            put(&format!("{name}.samples"), t.samples.to_string());
            put(&format!("{name}.values"), t.values.to_string());
            put(&format!("{name}.errors"), t.errors.to_string());
            put(
                &format!("{name}.cpu_s"),
                format!("{:.6}", ns_to_s(t.cpu_ns)),
            );
        }
        put(
            "counting.cpu_s",
            format!("{:.6}", ns_to_s(self.counting_ns)),
        );
        put("process.values", self.total_values().to_string());
        put("process.cpu_s", format!("{:.6}", self.process_s));
        put(
            "vmm.pids",
            self.vmm_pids
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
        );
        put(
            "vmm.cpu_s",
            format!("{:.6}", ticks_to_s(self.vmm.total, self.tck)),
        );
        put(
            "vmm.vcpu_cpu_s",
            format!("{:.6}", ticks_to_s(self.vmm.vcpus, self.tck)),
        );
        put(
            "vmm.other_cpu_s",
            format!("{:.6}", ticks_to_s(self.vmm.other(), self.tck)),
        );
        if let Some(extra) = self.vmm_request_estimate_s() {
            put("vmm.request_estimate_cpu_s", format!("{extra:.6}"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_number_and_boolean_leaves() {
        let v = serde_json::json!({
            "kind": "host_sample", "ts": 1, "ok": true, "none": null,
            "list": [1, 2.5, {"a": 3, "b": "x"}], "nested": {"c": false}
        });
        assert_eq!(count_values(&v), 6);
    }

    #[test]
    fn stat_cpu_skips_names_with_spaces_and_parens() {
        let line = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 9 0 0";
        assert_eq!(parse_stat_cpu(line), Some(12));
        assert_eq!(parse_stat_cpu("42 (x) S 1"), None);
    }

    #[test]
    fn auxv_entries_are_found() {
        let mut auxv = Vec::new();
        for word in [6usize, 4096, 17, 100, 0, 0] {
            auxv.extend_from_slice(&word.to_ne_bytes());
        }
        assert_eq!(auxv_value(&auxv, 17), Some(100));
        assert_eq!(auxv_value(&auxv, 99), None);
        assert!(clock_ticks_per_second() > 0);
    }

    #[test]
    fn this_process_has_cpu_time() {
        assert!(process_cpu_ticks(Path::new("/proc/self")).is_ok());
    }
}

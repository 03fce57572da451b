//! Replays recorded procfs/sysfs trees under one fixed root, as the files of a live host
//! change under `/proc` and `/sys` between two reads.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of these helpers"
)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleetmind_collector::{HostCollector, HostCollectorConfig};
use fleetmind_schema::HostSample;

/// A temporary root holding one snapshot of a fixture at a time.
pub struct Replay {
    root: tempfile::TempDir,
    fixture: PathBuf,
}

impl Replay {
    /// Replays `tests/fixtures/<name>`.
    pub fn new(name: &str) -> Self {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        assert!(fixture.is_dir(), "no fixture {}", fixture.display());
        Self {
            root: tempfile::tempdir().expect("tempdir"),
            fixture,
        }
    }

    pub fn proc_root(&self) -> PathBuf {
        self.root.path().join("proc")
    }

    pub fn sys_root(&self) -> PathBuf {
        self.root.path().join("sys")
    }

    /// A collector reading this replay's root.
    pub fn collector(&self, host: &str) -> HostCollector {
        HostCollector::new(HostCollectorConfig {
            host: host.to_owned(),
            proc_root: self.proc_root(),
            sys_root: self.sys_root(),
        })
    }

    /// Replaces the root's contents with snapshot `snapshot` (`t0`, `t1`) of the fixture.
    pub fn load(&self, snapshot: &str) {
        for dir in [self.proc_root(), self.sys_root()] {
            if dir.exists() {
                std::fs::remove_dir_all(&dir).expect("clear root");
            }
        }
        copy_tree(&self.fixture.join(snapshot), self.root.path());
    }

    /// Writes `content` to `rel` under the root (e.g. `proc/stat`).
    pub fn write(&self, rel: &str, content: &str) {
        let path = self.root.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("has parent")).expect("mkdir");
        std::fs::write(path, content).expect("write");
    }

    /// Removes `rel` under the root.
    pub fn remove(&self, rel: &str) {
        std::fs::remove_file(self.root.path().join(rel)).expect("remove");
    }

    /// Reads `rel` under the root.
    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.root.path().join(rel)).expect("read")
    }

    /// Primes on `t0`, then samples `t1` as `elapsed` later.
    pub fn sample_t0_t1(&self, elapsed: Duration) -> HostSample {
        let mut collector = self.collector("fixture-host");
        self.load("t0");
        let primed = collector
            .sample_at(1_000, Duration::ZERO)
            .expect("t0 reads");
        assert!(primed.is_none(), "the first read only primes");
        self.load("t1");
        collector
            .sample_at(1_000 + elapsed.as_millis() as i64, elapsed)
            .expect("t1 reads")
            .expect("second read samples")
    }
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("read fixture dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            std::fs::create_dir_all(&target).expect("mkdir");
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Asserts every fraction of a sample lies in `0..=1` and every figure is finite.
pub fn assert_in_range(s: &HostSample) {
    let c = &s.cpu;
    let mut fracs = vec![
        c.user_frac,
        c.system_frac,
        c.iowait_frac,
        c.steal_frac,
        c.idle_frac,
        c.busy_frac,
        s.mem.used_frac,
    ];
    fracs.extend(s.per_cpu.iter().flat_map(|p| [p.busy_frac, p.steal_frac]));
    if let Some(p) = &s.psi {
        fracs.extend([p.cpu_some_frac, p.memory_some_frac, p.io_some_frac]);
    }
    for f in fracs {
        assert!(
            (0.0..=1.0).contains(&f),
            "fraction {f} out of range in {s:#?}"
        );
    }
    let v = &s.vmstat;
    for r in [
        v.pgfault_per_s,
        v.pgmajfault_per_s,
        v.pswpin_per_s,
        v.pswpout_per_s,
        v.numa_miss_per_s,
        s.load1,
    ] {
        assert!(r.is_finite() && r >= 0.0, "rate {r} in {s:#?}");
    }
}

//! The demo fleet: a few VMs per VMM host whose load follows a daily pattern compressed into
//! minutes, so a fresh `fleetmind run` has real, changing guests to watch.
//!
//! Each VM has a [`Profile`]: a workload and a level curve over the simulated day (web traffic
//! peaks in the afternoon, a database late morning, batch jobs at night, one VM stays idle).
//! Hosts shift the curves a little so they do not move in lockstep. The levels are kept low:
//! the whole default fleet (two hosts, four VMs each) is meant to cost a fraction of one core.
//!
//! The [`DemoDriver`] sets every demo VM's level once a second. A VM whose level someone else
//! changed (an operator, a policy) is left alone from then on.

use std::collections::BTreeMap;
use std::f64::consts::TAU;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{ControlErrorKind, VmmControl};
use crate::guest::{Mix, Workload};
use crate::vmm::VmSpec;

/// The shape of a demo VM's day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Front end: compute and port I/O, peaking mid-afternoon.
    Web,
    /// Database: memory dirtying and I/O, peaking late morning.
    Database,
    /// Batch: compute and memory, at night.
    Batch,
    /// An idle guest with a timer.
    Idle,
}

impl Profile {
    const ALL: [Self; 4] = [Self::Web, Self::Database, Self::Batch, Self::Idle];

    fn prefix(self) -> &'static str {
        match self {
            Self::Web => "web",
            Self::Database => "db",
            Self::Batch => "batch",
            Self::Idle => "idle",
        }
    }

    /// (hour of peak, level at the trough, level at the peak).
    fn curve(self) -> (f64, f64, f64) {
        match self {
            Self::Web => (15.0, 5.0, 60.0),
            Self::Database => (11.0, 10.0, 50.0),
            Self::Batch => (2.0, 0.0, 70.0),
            Self::Idle => (0.0, 0.0, 0.0),
        }
    }

    fn spec(self, name: String) -> VmSpec {
        let (mem_mib, workload) = match self {
            Self::Web => (
                64,
                Workload::Phased {
                    mix: Mix {
                        cpu: 5,
                        io: 100,
                        mmio: 50,
                        memory: 20,
                    },
                    io_per_s: 400,
                    mmio_per_s: 100,
                    pages_per_s: 2_000,
                    working_set_mib: 16,
                },
            ),
            Self::Database => (
                96,
                Workload::Phased {
                    mix: Mix {
                        cpu: 3,
                        io: 60,
                        mmio: 0,
                        memory: 100,
                    },
                    io_per_s: 300,
                    mmio_per_s: 0,
                    pages_per_s: 8_000,
                    working_set_mib: 48,
                },
            ),
            Self::Batch => (
                64,
                Workload::Phased {
                    mix: Mix {
                        cpu: 8,
                        io: 10,
                        mmio: 0,
                        memory: 60,
                    },
                    io_per_s: 200,
                    mmio_per_s: 0,
                    pages_per_s: 4_000,
                    working_set_mib: 32,
                },
            ),
            Self::Idle => (32, Workload::Idle { wake_us: 100_000 }),
        };
        VmSpec {
            name,
            vcpus: 1,
            mem_mib,
            workload,
            level: 0,
        }
    }
}

/// What one host's demo fleet looks like.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoConfig {
    /// Which host this is (0-based): shifts the curves and names the VMs.
    pub host_index: u32,
    /// VMs on this host; profiles repeat in order web, db, batch, idle.
    pub vms: u32,
    /// Wall time of one simulated day.
    pub day_length: Duration,
    /// Simulated hour at start.
    pub start_hour: f64,
}

/// One VM of the demo fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoVm {
    /// Its spec (level 0; the driver sets it).
    pub spec: VmSpec,
    /// Its day.
    pub profile: Profile,
}

/// The VMs of one host's demo fleet, named `<profile>-<host>-<n>` (1-based).
#[must_use]
pub fn demo_vms(config: &DemoConfig) -> Vec<DemoVm> {
    (0..config.vms)
        .map(|i| {
            let profile = Profile::ALL[i as usize % Profile::ALL.len()];
            let name = format!("{}-{}-{}", profile.prefix(), config.host_index + 1, i + 1);
            DemoVm {
                spec: profile.spec(name),
                profile,
            }
        })
        .collect()
}

/// The simulated hour (0 ≤ h < 24) after `elapsed` of wall time.
#[must_use]
pub fn simulated_hour(elapsed: Duration, day_length: Duration, start_hour: f64) -> f64 {
    let day = day_length.as_secs_f64().max(1e-3);
    (start_hour + 24.0 * elapsed.as_secs_f64() / day).rem_euclid(24.0)
}

/// The level of `profile` on host `host_index` at simulated `hour`: a raised cosine from the
/// trough to the peak at the profile's peak hour, shifted by 40 minutes per host.
#[must_use]
pub fn level_at(profile: Profile, host_index: u32, hour: f64) -> u8 {
    let (peak_hour, low, high) = profile.curve();
    let shift = f64::from(host_index % 6) * (40.0 / 60.0);
    let phase = (hour - peak_hour - shift) / 24.0;
    let shape = 0.5 + 0.5 * (TAU * phase).cos();
    let level = (low + (high - low) * shape).round().clamp(0.0, 100.0);
    // In 0..=100 after the clamp.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let level = level as u8;
    level
}

/// Drives the demo VMs' levels from a thread; stops (and joins) on drop.
#[derive(Debug)]
pub struct DemoDriver {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// How often the driver updates levels.
const DRIVE_PERIOD: Duration = Duration::from_secs(1);

impl DemoDriver {
    /// Creates the demo VMs on `control` (a VM that cannot be created is logged and skipped)
    /// and starts driving their levels.
    ///
    /// # Errors
    ///
    /// The spawn error if the driver thread cannot start.
    pub fn start(control: Arc<VmmControl>, config: DemoConfig) -> std::io::Result<Self> {
        let mut driven = BTreeMap::new();
        let hour = simulated_hour(Duration::ZERO, config.day_length, config.start_hour);
        for vm in demo_vms(&config) {
            let mut spec = vm.spec;
            spec.level = level_at(vm.profile, config.host_index, hour);
            let name = spec.name.clone();
            match control.create(spec) {
                Ok(_) => {
                    driven.insert(name, (vm.profile, None::<u8>));
                }
                Err(e) => tracing::warn!(vm = %name, error = %e, "demo VM not created"),
            }
        }
        tracing::info!(
            host = control.host(),
            vms = driven.len(),
            day_length = ?config.day_length,
            "demo fleet started"
        );
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("fm-demo".into())
            .spawn(move || drive(&control, &config, driven, &stopped))?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

fn drive(
    control: &VmmControl,
    config: &DemoConfig,
    mut driven: BTreeMap<String, (Profile, Option<u8>)>,
    stopped: &mpsc::Receiver<()>,
) {
    let started = Instant::now();
    loop {
        let hour = simulated_hour(started.elapsed(), config.day_length, config.start_hour);
        driven.retain(|name, (profile, last)| {
            let current = match control.get(name) {
                Ok(info) => info.spec.level,
                Err(e) if e.kind == ControlErrorKind::NotFound => return false,
                Err(_) => return true,
            };
            if last.is_some_and(|l| l != current) {
                tracing::info!(vm = %name, level = current, "demo VM under manual control now");
                return false;
            }
            let level = level_at(*profile, config.host_index, hour);
            if control.set_level(name, level).is_ok() {
                *last = Some(level);
            }
            true
        });
        match stopped.recv_timeout(DRIVE_PERIOD) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

impl Drop for DemoDriver {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_names_and_profiles_cycle() {
        let vms = demo_vms(&DemoConfig {
            host_index: 1,
            vms: 5,
            day_length: Duration::from_secs(600),
            start_hour: 8.0,
        });
        let names: Vec<_> = vms.iter().map(|v| v.spec.name.as_str()).collect();
        assert_eq!(
            names,
            ["web-2-1", "db-2-2", "batch-2-3", "idle-2-4", "web-2-5"]
        );
        for vm in &vms {
            vm.spec
                .workload
                .validate(vm.spec.mem_mib)
                .expect("demo workloads fit their VMs");
        }
    }

    #[test]
    fn the_day_is_compressed_and_wraps() {
        let day = Duration::from_secs(600);
        assert!((simulated_hour(Duration::ZERO, day, 8.0) - 8.0).abs() < 1e-9);
        assert!((simulated_hour(Duration::from_secs(150), day, 8.0) - 14.0).abs() < 1e-9);
        assert!((simulated_hour(Duration::from_secs(600), day, 8.0) - 8.0).abs() < 1e-9);
        assert!((simulated_hour(Duration::from_secs(450), day, 8.0) - 2.0).abs() < 1e-9);
    }

    #[test]
    fn levels_peak_at_the_profile_hour_and_hosts_are_shifted() {
        assert_eq!(level_at(Profile::Web, 0, 15.0), 60);
        assert_eq!(level_at(Profile::Web, 0, 3.0), 5);
        assert_eq!(level_at(Profile::Batch, 0, 2.0), 70);
        assert!(level_at(Profile::Batch, 0, 14.0) < 5);
        assert_eq!(level_at(Profile::Idle, 0, 12.0), 0);
        // Host 2 runs 40 minutes behind host 1: lower on the morning slope, same peak.
        assert!(level_at(Profile::Web, 1, 10.0) < level_at(Profile::Web, 0, 10.0));
        assert_eq!(level_at(Profile::Web, 1, 15.0 + 40.0 / 60.0), 60);
        // Rises through the morning.
        let morning: Vec<u8> = (6..=15)
            .map(|h| level_at(Profile::Web, 0, f64::from(h)))
            .collect();
        assert!(morning.windows(2).all(|w| w[0] <= w[1]), "{morning:?}");
    }
}

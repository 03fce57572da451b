//! Workloads, as the control API names them, and their translation into control-page values.
//!
//! A workload says what load a VM generates at full intensity; the VM's level (0..=100 %)
//! scales it. The VMM turns both into per-vCPU, per-tick budgets that are the same on every
//! KVM flavour: port writes, MMIO writes and dirtied pages are counted, and compute is measured
//! in TSC cycles (instruction throughput differs by orders of magnitude between a PVM host's
//! emulator and VMX, but a TSC cycle is a TSC cycle). The guest does its budget, then halts
//! until the next tick, so a requested rate is met whatever an operation costs, as long as a
//! tick's work fits in a tick.

use serde::{Deserialize, Serialize};

use super::layout::{self, crash, mode};

/// What a VM's guest does. JSON: `{"kind": "io", "rate_per_s": 2000}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Workload {
    /// Halts, waking up every `wake_us` microseconds through the paravirtual sleep port: an
    /// idle guest with a timer. Not scaled by the level.
    Idle {
        /// Microseconds between wake-ups (at least 1).
        #[serde(default = "default_wake_us")]
        wake_us: u32,
    },
    /// Busy compute in ring 3 for `level` % of each tick on every vCPU.
    Cpu,
    /// Port writes (each a `KVM_EXIT_IO` to userspace) at `rate_per_s` × level / 100 per VM.
    Io {
        /// Writes per second per VM at level 100.
        rate_per_s: u32,
    },
    /// Writes to an unbacked guest-physical page (each a `KVM_EXIT_MMIO`), like `io`.
    Mmio {
        /// Writes per second per VM at level 100.
        rate_per_s: u32,
    },
    /// Dirties the pages of a working set, round robin, at `pages_per_s` × level / 100.
    Memory {
        /// Working-set size; it must fit in guest memory above 1 MiB.
        working_set_mib: u32,
        /// Pages dirtied per second per VM at level 100.
        pages_per_s: u32,
    },
    /// All of the above at once, each at `level` × its mix weight of its full-scale rate. The
    /// level and mix can change at any time ([`crate::vmm::VmHandle::set_level`],
    /// [`crate::vmm::VmHandle::set_mix`]), so a scenario can play daily patterns, ramps and
    /// spikes without restarting the guest.
    Phased {
        /// Weight of each kind of load, in percent of its full-scale rate.
        mix: Mix,
        /// Port writes per second per VM at level 100 and io weight 100.
        io_per_s: u32,
        /// MMIO writes per second per VM at level 100 and mmio weight 100.
        mmio_per_s: u32,
        /// Pages dirtied per second per VM at level 100 and memory weight 100.
        pages_per_s: u32,
        /// Working-set size.
        working_set_mib: u32,
    },
    /// Runs normal ticks for `after_ms`, then crashes the guest (fault injection).
    Crash {
        /// Milliseconds of normal ticks first.
        after_ms: u32,
        /// How the guest dies.
        how: CrashKind,
    },
    /// `count` port writes back to back, once, then idles (measures the exit round trip).
    IoBurst {
        /// Port writes.
        count: u32,
    },
    /// A tight counting loop in one privilege ring (measures how fast guest code runs there).
    Spin {
        /// Where the loop runs.
        ring: Ring,
    },
}

fn default_wake_us() -> u32 {
    10_000
}

/// Weights of the kinds of load of a `phased` workload, each 0..=100 %.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mix {
    /// Share of each tick spent computing.
    #[serde(default)]
    pub cpu: u8,
    /// Share of the full-scale port-write rate.
    #[serde(default)]
    pub io: u8,
    /// Share of the full-scale MMIO-write rate.
    #[serde(default)]
    pub mmio: u8,
    /// Share of the full-scale page-dirtying rate.
    #[serde(default)]
    pub memory: u8,
}

/// How a `crash` workload dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrashKind {
    /// An exception that cannot be delivered: `KVM_EXIT_SHUTDOWN`.
    TripleFault,
    /// An invalid opcode, reported by the guest's IDT stub.
    Exception,
}

/// A privilege ring of the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ring {
    /// Ring 0 (on PVM hosts: KVM's instruction emulator).
    Kernel,
    /// Ring 3 (native on every flavour).
    User,
}

/// A workload that does not fit the VM.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkloadError {
    /// The working set does not fit in guest memory above 1 MiB.
    #[error("working_set_mib must be at most {max_mib} for {mem_mib} MiB of guest memory")]
    WorkingSet {
        /// Largest working set that fits.
        max_mib: u32,
        /// The VM's memory.
        mem_mib: u32,
    },
    /// A mix weight above 100.
    #[error("mix.{field} must be between 0 and 100")]
    Mix {
        /// The weight's name.
        field: &'static str,
    },
    /// An idle wake-up interval of 0.
    #[error("wake_us must be at least 1")]
    WakeUs,
}

impl Workload {
    /// The JSON name of the variant.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Idle { .. } => "idle",
            Self::Cpu => "cpu",
            Self::Io { .. } => "io",
            Self::Mmio { .. } => "mmio",
            Self::Memory { .. } => "memory",
            Self::Phased { .. } => "phased",
            Self::Crash { .. } => "crash",
            Self::IoBurst { .. } => "io_burst",
            Self::Spin { .. } => "spin",
        }
    }

    /// Checks the workload against a VM of `mem_mib` MiB.
    ///
    /// # Errors
    ///
    /// [`WorkloadError`] naming the field that does not fit.
    pub fn validate(&self, mem_mib: u32) -> Result<(), WorkloadError> {
        let max_mib = mem_mib.saturating_sub((layout::WORKING_SET_GPA >> 20) as u32);
        let ws = |working_set_mib: u32| {
            if working_set_mib > max_mib {
                Err(WorkloadError::WorkingSet { max_mib, mem_mib })
            } else {
                Ok(())
            }
        };
        match self {
            Self::Idle { wake_us: 0 } => Err(WorkloadError::WakeUs),
            Self::Memory {
                working_set_mib, ..
            } => ws(*working_set_mib),
            Self::Phased {
                mix,
                working_set_mib,
                ..
            } => {
                mix.validate()?;
                ws(*working_set_mib)
            }
            _ => Ok(()),
        }
    }
}

impl Mix {
    /// Checks that every weight is at most 100.
    ///
    /// # Errors
    ///
    /// [`WorkloadError::Mix`] naming the first weight above 100.
    pub fn validate(&self) -> Result<(), WorkloadError> {
        for (field, value) in [
            ("cpu", self.cpu),
            ("io", self.io),
            ("mmio", self.mmio),
            ("memory", self.memory),
        ] {
            if value > 100 {
                return Err(WorkloadError::Mix { field });
            }
        }
        Ok(())
    }
}

/// The values the VMM writes into the control page for a workload at a level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ControlValues {
    /// [`layout::control::MODE`].
    pub mode: u32,
    /// [`layout::control::LEVEL`].
    pub level: u32,
    /// [`layout::control::CPU_TSC_PER_TICK`].
    pub cpu_tsc_per_tick: u64,
    /// [`layout::control::IO_PER_TICK`].
    pub io_per_tick: u64,
    /// [`layout::control::MMIO_PER_TICK`].
    pub mmio_per_tick: u64,
    /// [`layout::control::MEM_PER_TICK`].
    pub mem_per_tick: u64,
    /// [`layout::control::WS_PART_PAGES`].
    pub ws_part_pages: u64,
    /// [`layout::control::IDLE_SLEEP_US`].
    pub idle_sleep_us: u64,
    /// [`layout::control::CRASH_AFTER_TICKS`].
    pub crash_after_ticks: u64,
    /// [`layout::control::CRASH_KIND`].
    pub crash_kind: u32,
    /// [`layout::control::BURST_COUNT`].
    pub burst_count: u32,
}

/// `rate_per_s × level% × weight%` spread over `vcpus`, per tick, in budget fixed point.
fn per_tick(rate_per_s: u32, level: u8, weight: u8, vcpus: u32) -> u64 {
    let numerator = (u128::from(rate_per_s)
        * u128::from(level)
        * u128::from(weight)
        * u128::from(layout::TICK_NS))
        << layout::BUDGET_FRACTION_BITS;
    let denominator = 100 * 100 * u128::from(vcpus.max(1)) * 1_000_000_000;
    u64::try_from(numerator / denominator).unwrap_or(u64::MAX)
}

/// TSC cycles of one tick × level% × weight%.
fn cpu_cycles(tsc_khz: u32, level: u8, weight: u8) -> u64 {
    let cycles = u128::from(tsc_khz) * u128::from(layout::TICK_NS) / 1_000_000;
    u64::try_from(cycles * u128::from(level) * u128::from(weight) / 10_000).unwrap_or(u64::MAX)
}

impl ControlValues {
    /// Budgets for `workload` at `level` (clamped to 100) on `vcpus` vCPUs whose TSC runs at
    /// `tsc_khz`.
    #[must_use]
    pub fn compute(workload: &Workload, level: u8, vcpus: u32, tsc_khz: u32) -> Self {
        let level = level.min(100);
        let pages =
            |mib: u32| u64::from(mib) * (1 << 20) / layout::PAGE_SIZE / u64::from(vcpus.max(1));
        let mut values = Self {
            mode: mode::PACED,
            level: u32::from(level),
            ..Self::default()
        };
        match workload {
            Workload::Idle { wake_us } => {
                values.mode = mode::IDLE;
                values.idle_sleep_us = u64::from(*wake_us);
            }
            Workload::Cpu => values.cpu_tsc_per_tick = cpu_cycles(tsc_khz, level, 100),
            Workload::Io { rate_per_s } => {
                values.io_per_tick = per_tick(*rate_per_s, level, 100, vcpus);
            }
            Workload::Mmio { rate_per_s } => {
                values.mmio_per_tick = per_tick(*rate_per_s, level, 100, vcpus);
            }
            Workload::Memory {
                working_set_mib,
                pages_per_s,
            } => {
                values.mem_per_tick = per_tick(*pages_per_s, level, 100, vcpus);
                values.ws_part_pages = pages(*working_set_mib);
            }
            Workload::Phased {
                mix,
                io_per_s,
                mmio_per_s,
                pages_per_s,
                working_set_mib,
            } => {
                values.cpu_tsc_per_tick = cpu_cycles(tsc_khz, level, mix.cpu);
                values.io_per_tick = per_tick(*io_per_s, level, mix.io, vcpus);
                values.mmio_per_tick = per_tick(*mmio_per_s, level, mix.mmio, vcpus);
                values.mem_per_tick = per_tick(*pages_per_s, level, mix.memory, vcpus);
                values.ws_part_pages = pages(*working_set_mib);
            }
            Workload::Crash { after_ms, how } => {
                values.mode = mode::CRASH;
                values.crash_after_ticks = u64::from(*after_ms) * 1_000_000 / layout::TICK_NS;
                values.crash_kind = match how {
                    CrashKind::TripleFault => crash::TRIPLE_FAULT,
                    CrashKind::Exception => crash::EXCEPTION,
                };
            }
            Workload::IoBurst { count } => {
                values.mode = mode::BURST;
                values.burst_count = *count;
            }
            Workload::Spin { ring } => {
                values.mode = match ring {
                    Ring::Kernel => mode::SPIN_KERNEL,
                    Ring::User => mode::SPIN_USER,
                };
            }
        }
        values
    }

    /// The 64-bit fields as `(offset in the control page, value)`.
    #[must_use]
    pub fn u64_fields(&self) -> [(u64, u64); 8] {
        use layout::control as c;
        [
            (c::CPU_TSC_PER_TICK, self.cpu_tsc_per_tick),
            (c::IO_PER_TICK, self.io_per_tick),
            (c::MMIO_PER_TICK, self.mmio_per_tick),
            (c::MEM_PER_TICK, self.mem_per_tick),
            (c::WS_PART_PAGES, self.ws_part_pages),
            (c::IDLE_SLEEP_US, self.idle_sleep_us),
            (c::CRASH_AFTER_TICKS, self.crash_after_ticks),
            (c::TICK_NS, layout::TICK_NS),
        ]
    }

    /// The 32-bit fields as `(offset in the control page, value)`; the mode comes last, so a
    /// guest that sees a new mode also sees its budgets.
    #[must_use]
    pub fn u32_fields(&self) -> [(u64, u32); 4] {
        use layout::control as c;
        [
            (c::LEVEL, self.level),
            (c::CRASH_KIND, self.crash_kind),
            (c::BURST_COUNT, self.burst_count),
            (c::MODE, self.mode),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: u64 = 1 << layout::BUDGET_FRACTION_BITS;

    #[test]
    fn io_rate_becomes_a_per_tick_budget_per_vcpu() {
        let v = ControlValues::compute(&Workload::Io { rate_per_s: 2000 }, 100, 1, 0);
        assert_eq!(v.mode, mode::PACED);
        assert_eq!(v.io_per_tick, 20 * ONE, "2000/s at 100 ticks/s");
        let v = ControlValues::compute(&Workload::Io { rate_per_s: 2000 }, 50, 2, 0);
        assert_eq!(v.io_per_tick, 5 * ONE, "half of 2000/s over 2 vCPUs");
        let v = ControlValues::compute(&Workload::Io { rate_per_s: 50 }, 100, 1, 0);
        assert_eq!(v.io_per_tick, ONE / 2, "fractions accumulate in the guest");
    }

    #[test]
    fn cpu_budget_is_a_share_of_the_tick_in_tsc_cycles() {
        let v = ControlValues::compute(&Workload::Cpu, 100, 4, 2_000_000);
        assert_eq!(v.cpu_tsc_per_tick, 20_000_000, "10 ms at 2 GHz");
        let v = ControlValues::compute(&Workload::Cpu, 25, 4, 2_000_000);
        assert_eq!(v.cpu_tsc_per_tick, 5_000_000);
    }

    #[test]
    fn phased_scales_each_kind_by_level_and_weight() {
        let w = Workload::Phased {
            mix: Mix {
                cpu: 50,
                io: 100,
                mmio: 0,
                memory: 10,
            },
            io_per_s: 4000,
            mmio_per_s: 1000,
            pages_per_s: 10_000,
            working_set_mib: 8,
        };
        let v = ControlValues::compute(&w, 50, 1, 1_000_000);
        assert_eq!(v.io_per_tick, 20 * ONE);
        assert_eq!(v.mmio_per_tick, 0);
        assert_eq!(v.mem_per_tick, 5 * ONE);
        assert_eq!(v.cpu_tsc_per_tick, 2_500_000);
        assert_eq!(v.ws_part_pages, 2048);
        let idle = ControlValues::compute(&w, 0, 1, 1_000_000);
        assert_eq!(
            (idle.io_per_tick, idle.cpu_tsc_per_tick, idle.mode),
            (0, 0, mode::PACED)
        );
    }

    #[test]
    fn other_modes() {
        let v = ControlValues::compute(&Workload::Idle { wake_us: 500 }, 100, 1, 0);
        assert_eq!((v.mode, v.idle_sleep_us), (mode::IDLE, 500));
        let v = ControlValues::compute(
            &Workload::Crash {
                after_ms: 200,
                how: CrashKind::TripleFault,
            },
            100,
            1,
            0,
        );
        assert_eq!(
            (v.mode, v.crash_after_ticks, v.crash_kind),
            (mode::CRASH, 20, crash::TRIPLE_FAULT)
        );
        let v = ControlValues::compute(&Workload::Spin { ring: Ring::User }, 100, 1, 0);
        assert_eq!(v.mode, mode::SPIN_USER);
        assert_eq!(v.u32_fields()[3], (layout::control::MODE, mode::SPIN_USER));
    }

    #[test]
    fn validation_names_the_field() {
        let w = Workload::Memory {
            working_set_mib: 64,
            pages_per_s: 1,
        };
        assert_eq!(
            w.validate(64).unwrap_err().to_string(),
            "working_set_mib must be at most 63 for 64 MiB of guest memory"
        );
        assert!(w.validate(65).is_ok());
        let bad_mix = Workload::Phased {
            mix: Mix {
                io: 101,
                ..Mix::default()
            },
            io_per_s: 0,
            mmio_per_s: 0,
            pages_per_s: 0,
            working_set_mib: 0,
        };
        assert_eq!(
            bad_mix.validate(16).unwrap_err().to_string(),
            "mix.io must be between 0 and 100"
        );
        assert!(Workload::Idle { wake_us: 0 }.validate(1).is_err());
    }

    #[test]
    fn json_form() {
        let w: Workload = serde_json::from_str(r#"{"kind":"io","rate_per_s":2000}"#).unwrap();
        assert_eq!(w, Workload::Io { rate_per_s: 2000 });
        let w: Workload = serde_json::from_str(r#"{"kind":"idle"}"#).unwrap();
        assert_eq!(w, Workload::Idle { wake_us: 10_000 });
        let w: Workload = serde_json::from_str(r#"{"kind":"cpu"}"#).unwrap();
        assert_eq!(w, Workload::Cpu);
        let w: Workload =
            serde_json::from_str(r#"{"kind":"crash","after_ms":5,"how":"triple_fault"}"#).unwrap();
        assert_eq!(w.kind(), "crash");
        let w: Workload = serde_json::from_str(r#"{"kind":"spin","ring":"user"}"#).unwrap();
        assert_eq!(w, Workload::Spin { ring: Ring::User });
        assert!(serde_json::from_str::<Workload>(r#"{"kind":"io","rate":1}"#).is_err());
        assert!(serde_json::from_str::<Workload>(r#"{"kind":"warp"}"#).is_err());
        assert!(serde_json::from_str::<Mix>(r#"{"cpu":1,"disk":2}"#).is_err());
        let back = serde_json::to_string(&Workload::Io { rate_per_s: 7 }).unwrap();
        assert_eq!(back, r#"{"kind":"io","rate_per_s":7}"#);
    }
}

//! Turning two readings of kernel counters into fractions and rates.
//!
//! Counters are cumulative, so every figure of a sample is a difference between two reads.
//! The kernel's counters are not perfectly monotonic: a CPU taken offline and back can restart
//! its idle time, and `iowait` may decrease (proc(5) says so). Nothing here panics or yields
//! NaN, infinity or a negative value: a CPU whose counters went backwards has no data for the
//! interval, and a rate whose counter went backwards is 0.

use std::ops::Add;
use std::time::Duration;

use fleetmind_schema::CpuFractions;

/// The CPU-time counters of one `cpu` line of `/proc/stat`, in jiffies (USER_HZ ticks).
///
/// `guest` and `guest_nice` are left out: the kernel already counts them in `user` and `nice`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Jiffies {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

impl Jiffies {
    /// The time spent in each state between `prev` and `self`, or `None` when a counter other
    /// than `iowait` went backwards (the CPU was reset, e.g. by hotplug). An `iowait` that
    /// went backwards counts as no iowait in the interval.
    pub fn since(&self, prev: &Jiffies) -> Option<JiffyDelta> {
        Some(JiffyDelta(Jiffies {
            user: self.user.checked_sub(prev.user)?,
            nice: self.nice.checked_sub(prev.nice)?,
            system: self.system.checked_sub(prev.system)?,
            idle: self.idle.checked_sub(prev.idle)?,
            iowait: self.iowait.saturating_sub(prev.iowait),
            irq: self.irq.checked_sub(prev.irq)?,
            softirq: self.softirq.checked_sub(prev.softirq)?,
            steal: self.steal.checked_sub(prev.steal)?,
        }))
    }
}

/// Jiffies spent in each state over one interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct JiffyDelta(Jiffies);

impl JiffyDelta {
    /// All the time accounted in the interval, saturating rather than overflowing.
    fn total(&self) -> u64 {
        let j = &self.0;
        [
            j.user, j.nice, j.system, j.idle, j.iowait, j.irq, j.softirq, j.steal,
        ]
        .into_iter()
        .fold(0u64, u64::saturating_add)
    }

    /// The interval as fractions of the time accounted, or `None` when no time was accounted
    /// (the interval was shorter than a jiffy).
    ///
    /// Each fraction is one division of two integers, so that fixture tests can compare them
    /// with decimal literals exactly.
    pub fn fractions(&self) -> Option<CpuFractions> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let j = &self.0;
        let frac = |part: u64| part.min(total) as f64 / total as f64;
        Some(CpuFractions {
            user_frac: frac(j.user.saturating_add(j.nice)),
            system_frac: frac(j.system.saturating_add(j.irq).saturating_add(j.softirq)),
            iowait_frac: frac(j.iowait),
            steal_frac: frac(j.steal),
            idle_frac: frac(j.idle),
            busy_frac: frac(total.saturating_sub(j.idle).saturating_sub(j.iowait)),
        })
    }
}

impl Add for JiffyDelta {
    type Output = JiffyDelta;

    fn add(self, other: JiffyDelta) -> JiffyDelta {
        let (a, b) = (self.0, other.0);
        JiffyDelta(Jiffies {
            user: a.user.saturating_add(b.user),
            nice: a.nice.saturating_add(b.nice),
            system: a.system.saturating_add(b.system),
            idle: a.idle.saturating_add(b.idle),
            iowait: a.iowait.saturating_add(b.iowait),
            irq: a.irq.saturating_add(b.irq),
            softirq: a.softirq.saturating_add(b.softirq),
            steal: a.steal.saturating_add(b.steal),
        })
    }
}

/// Events per second of a counter read as `prev` then `cur`, `elapsed` apart: 0 when the
/// counter went backwards or no time elapsed.
pub(super) fn per_second(prev: u64, cur: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    cur.checked_sub(prev)
        .map_or(0.0, |delta| delta as f64 / secs)
}

/// Share of `elapsed` covered by a microsecond stall counter read as `prev` then `cur`, in
/// `0..=1` (the counter can run slightly ahead of our clock between the two reads).
pub(super) fn stall_fraction(prev_us: u64, cur_us: u64, elapsed: Duration) -> f64 {
    let elapsed_us = elapsed.as_micros();
    if elapsed_us == 0 {
        return 0.0;
    }
    cur_us
        .checked_sub(prev_us)
        .map_or(0.0, |delta| (delta as f64 / elapsed_us as f64).min(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jiffies(v: [u64; 8]) -> Jiffies {
        let [user, nice, system, idle, iowait, irq, softirq, steal] = v;
        Jiffies {
            user,
            nice,
            system,
            idle,
            iowait,
            irq,
            softirq,
            steal,
        }
    }

    #[test]
    fn fractions_follow_the_schema_definitions() {
        let prev = jiffies([100, 10, 50, 1000, 5, 1, 2, 0]);
        let cur = jiffies([140, 20, 60, 1020, 10, 3, 5, 10]);
        // deltas: user 40, nice 10, system 10, idle 20, iowait 5, irq 2, softirq 3, steal 10
        let f = cur.since(&prev).and_then(|d| d.fractions()).expect("data");
        assert_eq!(f.user_frac, 50.0 / 100.0);
        assert_eq!(f.system_frac, 15.0 / 100.0);
        assert_eq!(f.iowait_frac, 5.0 / 100.0);
        assert_eq!(f.steal_frac, 10.0 / 100.0);
        assert_eq!(f.idle_frac, 20.0 / 100.0);
        assert_eq!(f.busy_frac, 75.0 / 100.0);
    }

    #[test]
    fn a_reset_counter_means_no_data() {
        let prev = jiffies([100, 0, 50, 1000, 5, 0, 0, 0]);
        let cur = jiffies([10, 0, 5, 100, 1, 0, 0, 0]);
        assert_eq!(cur.since(&prev), None);
    }

    #[test]
    fn a_decreasing_iowait_counts_as_none() {
        let prev = jiffies([100, 0, 50, 1000, 50, 0, 0, 0]);
        let cur = jiffies([150, 0, 50, 1050, 40, 0, 0, 0]);
        let f = cur.since(&prev).and_then(|d| d.fractions()).expect("data");
        assert_eq!(f.iowait_frac, 0.0);
        assert_eq!(f.busy_frac, 0.5);
        assert_eq!(f.idle_frac, 0.5);
    }

    #[test]
    fn no_elapsed_jiffies_means_no_data() {
        let j = jiffies([1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(j.since(&j).and_then(|d| d.fractions()), None);
    }

    #[test]
    fn huge_counters_saturate_without_panicking() {
        let prev = Jiffies::default();
        let cur = jiffies([u64::MAX; 8]);
        let f = cur.since(&prev).and_then(|d| d.fractions()).expect("data");
        for v in [
            f.user_frac,
            f.system_frac,
            f.idle_frac,
            f.busy_frac,
            f.steal_frac,
        ] {
            assert!((0.0..=1.0).contains(&v), "{v}");
        }
    }

    #[test]
    fn rates_guard_time_and_direction() {
        let second = Duration::from_secs(2);
        assert_eq!(per_second(100, 300, second), 100.0);
        assert_eq!(per_second(300, 100, second), 0.0);
        assert_eq!(per_second(100, 300, Duration::ZERO), 0.0);
        assert_eq!(stall_fraction(0, 500_000, second), 0.25);
        assert_eq!(stall_fraction(0, 5_000_000, second), 1.0);
        assert_eq!(stall_fraction(10, 5, second), 0.0);
        assert_eq!(stall_fraction(0, 5, Duration::ZERO), 0.0);
    }
}

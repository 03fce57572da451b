//! Thread CPU affinity: pinning vCPU threads to CPUs, and reading where they may run.

use std::io;

use super::HostTopology;

/// Size of the kernel affinity mask we pass (`CPU_SETSIZE`, 1024 CPUs).
const MASK_CPUS: u32 = 1024;
/// The mask as 64-bit words, laid out like `cpu_set_t`.
type CpuMask = [u64; MASK_CPUS as usize / 64];
const _: () = assert!(size_of::<libc::cpu_set_t>() == size_of::<CpuMask>());

/// Why a thread could not be pinned.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The CPU list is empty.
    #[error("no CPU given")]
    NoCpus,
    /// A CPU is not online on this host (or does not exist).
    #[error("CPU {cpu} is not online (online CPUs: {online})")]
    CpuOffline {
        /// The CPU.
        cpu: u32,
        /// The online CPUs, as a list.
        online: String,
    },
    /// A CPU number is beyond the affinity mask.
    #[error("CPU {cpu} is beyond the {MASK_CPUS}-CPU affinity mask")]
    CpuOutOfRange {
        /// The CPU.
        cpu: u32,
    },
    /// No thread has that id.
    #[error("no thread {tid}")]
    NoSuchThread {
        /// The thread id.
        tid: i32,
    },
    /// `sched_setaffinity` failed otherwise (EPERM, or EINVAL when the cpuset allows none of
    /// the CPUs).
    #[error("sched_setaffinity of thread {tid} failed")]
    SetAffinity {
        /// The thread id.
        tid: i32,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The thread's cpuset kept it off some of the CPUs: it now runs on `effective` only.
    #[error("thread {tid} runs on CPUs {effective:?}, not all of {requested:?}")]
    Restricted {
        /// The thread id.
        tid: i32,
        /// The CPUs asked for.
        requested: Vec<u32>,
        /// The CPUs the kernel applied.
        effective: Vec<u32>,
    },
    /// Reading the affinity back failed.
    #[error("cannot check the new affinity")]
    Check(#[source] ThreadAffinityError),
}

/// Why a thread's affinity could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ThreadAffinityError {
    /// No thread has that id.
    #[error("no thread {tid}")]
    NoSuchThread {
        /// The thread id.
        tid: i32,
    },
    /// `sched_getaffinity` failed otherwise.
    #[error("sched_getaffinity of thread {tid} failed")]
    GetAffinity {
        /// The thread id.
        tid: i32,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// The kernel id of the calling thread (`gettid`), as procfs and affinity calls name it.
#[must_use]
pub fn current_tid() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::gettid() }
}

/// The CPUs thread `tid` may run on (its affinity mask), sorted.
///
/// # Errors
/// When the thread does not exist or the call is refused.
pub fn thread_affinity(tid: i32) -> Result<Vec<u32>, ThreadAffinityError> {
    let mut mask: CpuMask = [0; MASK_CPUS as usize / 64];
    // SAFETY: `mask` is writable and as large as the size passed; the kernel writes at most
    // that many bytes.
    let ret =
        unsafe { libc::sched_getaffinity(tid, size_of::<CpuMask>(), mask.as_mut_ptr().cast()) };
    if ret != 0 {
        let source = io::Error::last_os_error();
        return Err(if source.raw_os_error() == Some(libc::ESRCH) {
            ThreadAffinityError::NoSuchThread { tid }
        } else {
            ThreadAffinityError::GetAffinity { tid, source }
        });
    }
    Ok((0..MASK_CPUS)
        .filter(|&cpu| mask[cpu as usize / 64] & (1 << (cpu % 64)) != 0)
        .collect())
}

/// Pins thread `tid` to `cpus` (`sched_setaffinity`), after checking that every CPU is
/// online in `topology`, then checks that the kernel applied all of them.
///
/// # Errors
/// [`PinError::CpuOffline`] names the first CPU that is not online; [`PinError::Restricted`]
/// says the thread's cpuset kept it off some CPUs (the affinity has then been narrowed to the
/// CPUs it reports); the other variants when the thread does not exist or the call is refused.
pub fn pin_thread(topology: &HostTopology, tid: i32, cpus: &[u32]) -> Result<(), PinError> {
    if cpus.is_empty() {
        return Err(PinError::NoCpus);
    }
    let mut mask: CpuMask = [0; MASK_CPUS as usize / 64];
    for &cpu in cpus {
        if cpu >= MASK_CPUS {
            return Err(PinError::CpuOutOfRange { cpu });
        }
        if !topology.online_cpus.contains(&cpu) {
            return Err(PinError::CpuOffline {
                cpu,
                online: topology.online_cpus_text(),
            });
        }
        mask[cpu as usize / 64] |= 1 << (cpu % 64);
    }
    // SAFETY: `mask` is as large as the size passed; the kernel only reads it.
    let ret = unsafe { libc::sched_setaffinity(tid, size_of::<CpuMask>(), mask.as_ptr().cast()) };
    if ret != 0 {
        let source = io::Error::last_os_error();
        return Err(if source.raw_os_error() == Some(libc::ESRCH) {
            PinError::NoSuchThread { tid }
        } else {
            PinError::SetAffinity { tid, source }
        });
    }
    let effective = thread_affinity(tid).map_err(PinError::Check)?;
    let mut requested = cpus.to_vec();
    requested.sort_unstable();
    requested.dedup();
    if effective != requested {
        return Err(PinError::Restricted {
            tid,
            requested,
            effective,
        });
    }
    tracing::info!(tid, cpus = ?requested, "pinned thread");
    Ok(())
}

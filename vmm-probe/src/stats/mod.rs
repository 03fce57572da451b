//! KVM binary statistics (`KVM_GET_STATS_FD`) for VMs and vCPUs.
//!
//! KVM counts what it does for each VM and vCPU (exits by cause, halts and halt polling, page
//! faults, MMU work...). debugfs shows these counters too, but is often locked down and costs
//! one file per counter; the binary stats file descriptor gives them all in one `pread`, with
//! a self-describing schema. This module is our reader of that ABI
//! (`Documentation/virt/kvm/api.rst`, section `KVM_GET_STATS_FD`):
//!
//! ```text
//! +-------------+  offset 0: struct kvm_stats_header (flags, name_size, num_desc,
//! |   header    |            id_offset, desc_offset, data_offset)
//! +-------------+  id_offset: id string, name_size bytes, NUL-terminated
//! |     id      |
//! +-------------+  desc_offset: num_desc x (struct kvm_stats_desc + name_size name bytes)
//! | descriptors |
//! +-------------+  data_offset: u64 values; each descriptor's `size` values start at
//! |    data     |               data_offset + desc.offset
//! +-------------+
//! ```
//!
//! Header, id and descriptors never change for the life of the fd: [`KvmStats::open`] parses
//! them once, and [`KvmStats::read`] is one `pread` of the data block.
//!
//! Which counters move for a given guest action depends on the KVM flavour (see
//! [`crate::flavour`]): on PVM hosts, port I/O of a guest that is not PVM-aware is counted
//! under `exits` and `insn_emulation`, not `io_exits`. Consumers should not assume one.

mod layout;

#[cfg(test)]
mod guest_tests;

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

pub use layout::StatsHeader;

vmm_sys_util::ioctl_io_nr!(KVM_GET_STATS_FD, kvm_bindings::KVMIO, 0xce);

/// How a statistic accumulates (the type bits of the descriptor flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatKind {
    /// Only grows (reset only with the VM or vCPU).
    Cumulative,
    /// A current level; goes up and down.
    Instant,
    /// The highest level seen.
    Peak,
    /// A histogram with `size` buckets of `bucket_size` each.
    LinearHist,
    /// A histogram whose bucket `i` (from 1) counts values in `[2^(i-1), 2^i)`; bucket 0
    /// counts zeros.
    LogHist,
    /// A type this reader does not know (a newer kernel); the raw type bits.
    Unknown(u32),
}

impl StatKind {
    fn from_raw(raw: u32) -> Self {
        match raw {
            0 => Self::Cumulative,
            1 => Self::Instant,
            2 => Self::Peak,
            3 => Self::LinearHist,
            4 => Self::LogHist,
            other => Self::Unknown(other),
        }
    }

    /// Whether the statistic is a histogram (one value per bucket).
    #[must_use]
    pub fn is_histogram(self) -> bool {
        matches!(self, Self::LinearHist | Self::LogHist)
    }
}

/// What a statistic counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatUnit {
    /// A plain count.
    None,
    /// Bytes.
    Bytes,
    /// Seconds (scaled by the exponent, e.g. -9 for nanoseconds).
    Seconds,
    /// CPU cycles.
    Cycles,
    /// 0 or 1.
    Boolean,
    /// A unit this reader does not know; the raw unit bits.
    Unknown(u32),
}

impl StatUnit {
    fn from_raw(raw: u32) -> Self {
        match raw {
            0 => Self::None,
            1 => Self::Bytes,
            2 => Self::Seconds,
            3 => Self::Cycles,
            4 => Self::Boolean,
            other => Self::Unknown(other),
        }
    }
}

/// The base the exponent applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatBase {
    /// value × 10^exponent.
    Pow10,
    /// value × 2^exponent.
    Pow2,
    /// A base this reader does not know; the raw base bits.
    Unknown(u32),
}

impl StatBase {
    fn from_raw(raw: u32) -> Self {
        match raw {
            0 => Self::Pow10,
            1 => Self::Pow2,
            other => Self::Unknown(other),
        }
    }

    /// The factor `base^exponent`, or `None` for an unknown base.
    #[must_use]
    pub fn factor(self, exponent: i16) -> Option<f64> {
        let base: f64 = match self {
            Self::Pow10 => 10.0,
            Self::Pow2 => 2.0,
            Self::Unknown(_) => return None,
        };
        Some(base.powi(i32::from(exponent)))
    }
}

/// One statistic's descriptor, as parsed at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatDesc {
    /// The kernel's name (`exits`, `halt_wait_ns`...).
    pub name: Arc<str>,
    /// How it accumulates.
    pub kind: StatKind,
    /// What it counts.
    pub unit: StatUnit,
    /// Base of the exponent.
    pub base: StatBase,
    /// The value is `raw × base^exponent` units.
    pub exponent: i16,
    /// Number of u64 values (more than 1 for histograms).
    pub size: u16,
    /// Bucket width of a linear histogram; 0 otherwise.
    pub bucket_size: u32,
    /// Byte offset of the values within the data block.
    pub offset: u32,
}

/// One statistic's values at the time of a [`KvmStats::read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatValue {
    /// The kernel's name.
    pub name: Arc<str>,
    /// How it accumulates.
    pub kind: StatKind,
    /// What it counts.
    pub unit: StatUnit,
    /// Base of the exponent.
    pub base: StatBase,
    /// The value is `raw × base^exponent` units.
    pub exponent: i16,
    /// The raw values: one, or one per bucket for histograms.
    pub values: Vec<u64>,
}

impl StatValue {
    /// The single raw value of a non-histogram statistic.
    #[must_use]
    pub fn value(&self) -> Option<u64> {
        if self.kind.is_histogram() || self.values.len() != 1 {
            return None;
        }
        self.values.first().copied()
    }

    /// The single value in its unit (seconds, bytes...), exponent applied.
    #[must_use]
    pub fn scaled(&self) -> Option<f64> {
        // Counters above 2^53 lose precision in f64, which is fine for a scaled reading.
        #[allow(clippy::cast_precision_loss)]
        let raw = self.value()? as f64;
        Some(raw * self.base.factor(self.exponent)?)
    }
}

/// All statistics of a VM or vCPU at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// One entry per descriptor, in the kernel's order.
    pub values: Vec<StatValue>,
}

impl StatsSnapshot {
    /// The statistic called `name`.
    #[must_use]
    pub fn stat(&self, name: &str) -> Option<&StatValue> {
        self.values.iter().find(|v| &*v.name == name)
    }

    /// The raw value of the non-histogram statistic `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<u64> {
        self.stat(name)?.value()
    }

    /// The value of `name` in its unit, exponent applied (`halt_wait_ns` in seconds).
    #[must_use]
    pub fn scaled(&self, name: &str) -> Option<f64> {
        self.stat(name)?.scaled()
    }

    /// How much the non-histogram statistic `name` grew since `earlier`; `None` if it is
    /// missing from either or went down.
    #[must_use]
    pub fn delta(&self, earlier: &Self, name: &str) -> Option<u64> {
        self.get(name)?.checked_sub(earlier.get(name)?)
    }
}

/// Why a stats file could not be opened and parsed.
#[derive(Debug, thiserror::Error)]
pub enum OpenStatsError {
    /// The ioctl failed (not a KVM VM or vCPU fd, or a kernel without binary stats).
    #[error("KVM_GET_STATS_FD failed")]
    Ioctl(#[source] io::Error),
    /// `pread` failed.
    #[error("cannot read the stats {what} at offset {offset}")]
    Read {
        /// Which part of the file.
        what: &'static str,
        /// File offset.
        offset: u64,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The file ends before the part does.
    #[error("stats {what} at offset {offset} is truncated: {got} of {wanted} bytes")]
    ShortRead {
        /// Which part of the file.
        what: &'static str,
        /// File offset.
        offset: u64,
        /// Bytes wanted.
        wanted: usize,
        /// Bytes read.
        got: usize,
    },
    /// The header's name size is 0 or beyond our limit.
    #[error("stats name size {name_size} is out of range")]
    NameSize {
        /// The header's value.
        name_size: u32,
    },
    /// The header announces more descriptors than any kernel has.
    #[error("stats header announces {num_desc} descriptors")]
    TooManyDescriptors {
        /// The header's value.
        num_desc: u32,
    },
    /// The id string has no NUL within its field.
    #[error("stats id is not NUL-terminated")]
    IdNotTerminated,
    /// The id string is not UTF-8.
    #[error("stats id is not UTF-8")]
    IdNotUtf8,
    /// A descriptor's name has no NUL within its field.
    #[error("name of stats descriptor {index} is not NUL-terminated")]
    NameNotTerminated {
        /// Index of the descriptor.
        index: u32,
    },
    /// A descriptor's name is not UTF-8.
    #[error("name of stats descriptor {index} is not UTF-8")]
    NameNotUtf8 {
        /// Index of the descriptor.
        index: u32,
    },
    /// The descriptors place values beyond our data size limit.
    #[error("stats data block of {bytes} bytes is beyond the limit")]
    DataTooLarge {
        /// Size implied by the descriptors.
        bytes: u64,
    },
}

/// Why a stats read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadStatsError {
    /// `pread` failed.
    #[error("cannot read the stats data block")]
    Read(#[source] io::Error),
    /// The data block was shorter than at open.
    #[error("stats data block is truncated: {got} of {wanted} bytes")]
    ShortRead {
        /// Bytes wanted.
        wanted: usize,
        /// Bytes read.
        got: usize,
    },
}

/// An open stats file of one VM or vCPU, with its descriptors parsed.
///
/// Reads use `pread`, so one `KvmStats` can be read from several threads.
#[derive(Debug)]
pub struct KvmStats {
    file: File,
    header: StatsHeader,
    id: String,
    descs: Vec<StatDesc>,
    data_size: usize,
}

impl KvmStats {
    /// Opens the stats of the VM or vCPU behind `fd` (a `VmFd`, a `VcpuFd`, or any borrowed
    /// descriptor of one) and parses its header and descriptors.
    ///
    /// # Errors
    /// [`OpenStatsError::Ioctl`] when `fd` is not a KVM VM or vCPU, or the kernel has no
    /// binary stats; the other variants when the stats file is malformed.
    ///
    /// # Example
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # if !fleetmind_vmm_probe::test_utils::kvm_or_skip("doc stats::KvmStats::open") {
    /// #     return Ok(());
    /// # }
    /// use fleetmind_vmm_probe::stats::KvmStats;
    /// let vm = kvm_ioctls::Kvm::new()?.create_vm()?;
    /// let vcpu = vm.create_vcpu(0)?;
    /// let stats = KvmStats::open(&vcpu)?;
    /// let now = stats.read()?;
    /// println!("{}: {:?} exits", stats.id(), now.get("exits"));
    /// assert!(now.get("exits").is_some());
    /// # Ok(()) }
    /// ```
    pub fn open<F: AsRawFd + ?Sized>(fd: &F) -> Result<Self, OpenStatsError> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and only creates a new descriptor;
        // `fd` is borrowed for the whole call. On a descriptor that is not a KVM VM or
        // vCPU the kernel returns an error (ENOTTY), which is handled below.
        let ret = unsafe { vmm_sys_util::ioctl::ioctl(&fd.as_raw_fd(), KVM_GET_STATS_FD()) };
        if ret < 0 {
            return Err(OpenStatsError::Ioctl(io::Error::last_os_error()));
        }
        // SAFETY: on success the ioctl returns a new descriptor that nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(ret) };
        Self::from_stats_fd(owned)
    }

    /// Parses an already opened stats file descriptor (or any file laid out the same way,
    /// which is how the parser is tested).
    ///
    /// # Errors
    /// When the file cannot be read or is malformed; see [`OpenStatsError`].
    pub fn from_stats_fd(fd: OwnedFd) -> Result<Self, OpenStatsError> {
        let file = File::from(fd);
        let mut raw_header = [0u8; layout::HEADER_SIZE];
        read_exact_at(&file, 0, &mut raw_header, "header")?;
        let header = StatsHeader::decode(&raw_header);
        header.check()?;
        let mut id_field = vec![0u8; header.name_size as usize];
        read_exact_at(&file, u64::from(header.id_offset), &mut id_field, "id")?;
        let id = layout::decode_id(&id_field)?;
        let mut block = vec![0u8; header.desc_block_size()];
        read_exact_at(
            &file,
            u64::from(header.desc_offset),
            &mut block,
            "descriptors",
        )?;
        let descs = layout::decode_descriptors(&header, &block)?;
        let data_size = layout::data_block_size(&descs)?;
        let stats = Self {
            file,
            header,
            id,
            descs,
            data_size,
        };
        // One read now, so that a data block that is shorter than the descriptors say fails
        // here rather than at every later read.
        stats.read_data().map_err(|e| match e {
            ReadStatsError::Read(source) => OpenStatsError::Read {
                what: "data",
                offset: u64::from(header.data_offset),
                source,
            },
            ReadStatsError::ShortRead { wanted, got } => OpenStatsError::ShortRead {
                what: "data",
                offset: u64::from(header.data_offset),
                wanted,
                got,
            },
        })?;
        Ok(stats)
    }

    /// The header as the kernel gave it.
    #[must_use]
    pub fn header(&self) -> &StatsHeader {
        &self.header
    }

    /// The id string: `kvm-<pid>` for a VM, `kvm-<pid>/vcpu-<n>` for a vCPU.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The descriptors, in the kernel's order.
    #[must_use]
    pub fn descriptors(&self) -> &[StatDesc] {
        &self.descs
    }

    /// The descriptor called `name`.
    #[must_use]
    pub fn descriptor(&self, name: &str) -> Option<&StatDesc> {
        self.descs.iter().find(|d| &*d.name == name)
    }

    /// Reads all values (one `pread`).
    ///
    /// # Errors
    /// When the read fails or comes back shorter than at open.
    pub fn read(&self) -> Result<StatsSnapshot, ReadStatsError> {
        let data = self.read_data()?;
        Ok(StatsSnapshot {
            values: layout::decode_values(&self.descs, &data),
        })
    }

    fn read_data(&self) -> Result<Vec<u8>, ReadStatsError> {
        let mut data = vec![0u8; self.data_size];
        let got = loop {
            match self
                .file
                .read_at(&mut data, u64::from(self.header.data_offset))
            {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ReadStatsError::Read(e)),
            }
        };
        if got != data.len() {
            return Err(ReadStatsError::ShortRead {
                wanted: data.len(),
                got,
            });
        }
        Ok(data)
    }
}

/// One `pread` filling `buf` from `offset`; a short read is an error.
fn read_exact_at(
    file: &File,
    offset: u64,
    buf: &mut [u8],
    what: &'static str,
) -> Result<(), OpenStatsError> {
    let got = loop {
        match file.read_at(buf, offset) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(OpenStatsError::Read {
                    what,
                    offset,
                    source,
                });
            }
        }
    };
    if got != buf.len() {
        return Err(OpenStatsError::ShortRead {
            what,
            offset,
            wanted: buf.len(),
            got,
        });
    }
    Ok(())
}

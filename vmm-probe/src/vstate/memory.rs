//! Guest memory: one anonymous host mapping, registered with KVM as memory slot 0.
//!
//! The mapping is `MAP_NORESERVE`, so a VM costs host memory only for the pages its guest
//! touches; a guard page on each side makes it a VMA of its own. Its host address range is
//! public ([`GuestMemory::host_range`]) so the NUMA and balloon hooks can `madvise`/`mbind` it. Every access from the VMM is bounds-checked and
//! volatile or atomic, because the guest writes the same memory concurrently.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use serde::Serialize;

use crate::guest::layout::PAGE_SIZE;

/// Inaccessible bytes on each side of guest memory. They catch VMM overruns, and they keep the
/// kernel from merging two VMs' guest memory into one VMA, which would blur per-VM residency
/// in `numa_maps`.
const GUARD_BYTES: usize = PAGE_SIZE as usize;

/// Host virtual address range backing a VM's guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HostRange {
    /// Host virtual address of guest-physical address 0.
    pub addr: usize,
    /// Bytes (guest-physical addresses `0..len`).
    pub len: usize,
}

/// An anonymous mapping that backs a VM's RAM.
#[derive(Debug)]
pub struct GuestMemory {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned by this value and lives until it is dropped; every access goes
// through bounds-checked volatile or atomic operations, which are sound from any thread (the
// guest, too, writes concurrently).
unsafe impl Send for GuestMemory {}
// SAFETY: as for `Send`: shared access is only volatile or atomic.
unsafe impl Sync for GuestMemory {}

/// Guest memory could not be mapped.
#[derive(Debug, thiserror::Error)]
pub enum MapMemoryError {
    /// Zero, or not a multiple of the page size.
    #[error("guest memory size {0} is not a non-zero multiple of 4096")]
    Size(usize),
    /// `mmap` failed.
    #[error("mapping guest memory failed")]
    Mmap(#[source] io::Error),
}

/// A guest-memory access outside guest memory or misaligned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuestAccessError {
    /// The range is not inside guest memory.
    #[error("guest range {gpa:#x}+{len:#x} is outside guest memory of {size:#x} bytes")]
    OutOfRange {
        /// Guest-physical start.
        gpa: u64,
        /// Bytes.
        len: usize,
        /// Size of guest memory.
        size: usize,
    },
    /// An atomic access at an address not aligned to its size.
    #[error("guest address {gpa:#x} is not {align}-byte aligned")]
    Misaligned {
        /// Guest-physical address.
        gpa: u64,
        /// Required alignment.
        align: usize,
    },
}

impl GuestMemory {
    /// Maps `len` bytes of anonymous, private, `MAP_NORESERVE` memory between two guard
    /// pages.
    ///
    /// # Errors
    ///
    /// [`MapMemoryError::Size`] if `len` is 0 or not page-aligned; [`MapMemoryError::Mmap`] if
    /// the kernel refuses the mapping.
    pub fn new(len: usize) -> Result<Self, MapMemoryError> {
        if len == 0 || !len.is_multiple_of(4096) {
            return Err(MapMemoryError::Size(len));
        }
        let total = len + 2 * GUARD_BYTES;
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing; no existing
        // memory is affected. The result is checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(MapMemoryError::Mmap(io::Error::last_os_error()));
        }
        // SAFETY: `base + GUARD_BYTES .. + len` lies inside the mapping just made.
        let addr = unsafe { base.cast::<u8>().add(GUARD_BYTES) };
        // SAFETY: changes the protection of the middle of our own fresh mapping only.
        let rc = unsafe { libc::mprotect(addr.cast(), len, libc::PROT_READ | libc::PROT_WRITE) };
        if rc != 0 {
            let error = io::Error::last_os_error();
            // SAFETY: unmaps exactly the mapping made above, which nothing references yet.
            unsafe { libc::munmap(base, total) };
            return Err(MapMemoryError::Mmap(error));
        }
        let ptr = NonNull::new(addr)
            .ok_or_else(|| MapMemoryError::Mmap(io::Error::other("mmap returned NULL")))?;
        Ok(Self { ptr, len })
    }

    /// Bytes of guest memory.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: guest memory has at least one page.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The host address range of the mapping.
    #[must_use]
    pub fn host_range(&self) -> HostRange {
        HostRange {
            addr: self.ptr.as_ptr() as usize,
            len: self.len,
        }
    }

    fn offset(&self, gpa: u64, len: usize) -> Result<usize, GuestAccessError> {
        let out = || GuestAccessError::OutOfRange {
            gpa,
            len,
            size: self.len,
        };
        let start = usize::try_from(gpa).map_err(|_| out())?;
        let end = start.checked_add(len).ok_or_else(out)?;
        if end > self.len {
            return Err(out());
        }
        Ok(start)
    }

    /// Copies `data` to guest-physical `gpa`.
    ///
    /// # Errors
    ///
    /// [`GuestAccessError::OutOfRange`] if the range is not inside guest memory.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<(), GuestAccessError> {
        let start = self.offset(gpa, data.len())?;
        for (i, byte) in data.iter().enumerate() {
            // SAFETY: `start + i < len` was checked above, so the pointer is inside the mapping,
            // which lives as long as `self`.
            unsafe { self.ptr.as_ptr().add(start + i).write_volatile(*byte) };
        }
        Ok(())
    }

    /// Copies guest-physical `gpa..gpa + buf.len()` into `buf`.
    ///
    /// # Errors
    ///
    /// [`GuestAccessError::OutOfRange`] if the range is not inside guest memory.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestAccessError> {
        let start = self.offset(gpa, buf.len())?;
        for (i, byte) in buf.iter_mut().enumerate() {
            // SAFETY: `start + i < len` was checked above.
            *byte = unsafe { self.ptr.as_ptr().add(start + i).read_volatile() };
        }
        Ok(())
    }

    /// The naturally aligned `u64` at `gpa`, as an atomic shared with the guest.
    ///
    /// # Errors
    ///
    /// [`GuestAccessError`] if `gpa` is outside guest memory or not 8-byte aligned.
    pub fn atomic_u64(&self, gpa: u64) -> Result<&AtomicU64, GuestAccessError> {
        let start = self.offset(gpa, 8)?;
        if !start.is_multiple_of(8) {
            return Err(GuestAccessError::Misaligned { gpa, align: 8 });
        }
        // SAFETY: in bounds and 8-byte aligned (the mapping is page-aligned); the memory lives
        // as long as `self`, and is only ever accessed atomically or volatilely from Rust.
        Ok(unsafe { AtomicU64::from_ptr(self.ptr.as_ptr().add(start).cast()) })
    }

    /// The naturally aligned `u32` at `gpa`, as an atomic shared with the guest.
    ///
    /// # Errors
    ///
    /// [`GuestAccessError`] if `gpa` is outside guest memory or not 4-byte aligned.
    pub fn atomic_u32(&self, gpa: u64) -> Result<&AtomicU32, GuestAccessError> {
        let start = self.offset(gpa, 4)?;
        if !start.is_multiple_of(4) {
            return Err(GuestAccessError::Misaligned { gpa, align: 4 });
        }
        // SAFETY: in bounds and 4-byte aligned; as for `atomic_u64`.
        Ok(unsafe { AtomicU32::from_ptr(self.ptr.as_ptr().add(start).cast()) })
    }

    /// Gives the host pages of `gpa..gpa + len` back to the kernel (`MADV_DONTNEED`): the
    /// process's resident memory drops, and the guest reads zeros there until it writes again,
    /// which faults in fresh pages. For the balloon.
    ///
    /// # Errors
    ///
    /// [`DiscardError::Range`] if the range is outside guest memory, [`DiscardError::Unaligned`]
    /// if it is not whole pages;
    /// [`DiscardError::Madvise`] if the kernel refuses.
    pub fn discard(&self, gpa: u64, len: usize) -> Result<(), DiscardError> {
        let start = self.offset(gpa, len)?;
        let page = PAGE_SIZE as usize;
        if !start.is_multiple_of(page) || !len.is_multiple_of(page) {
            return Err(DiscardError::Unaligned { gpa, len });
        }
        // SAFETY: the range lies inside the private anonymous mapping owned by `self` (checked
        // above); MADV_DONTNEED only replaces its pages with zero-fill-on-demand ones, which
        // neither unmaps memory nor invalidates references (the guest and the atomics see
        // zeros, which every reader of guest memory already tolerates).
        let rc = unsafe {
            libc::madvise(
                self.ptr.as_ptr().add(start).cast(),
                len,
                libc::MADV_DONTNEED,
            )
        };
        if rc != 0 {
            return Err(DiscardError::Madvise(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Reads the `u64` at `gpa` (acquire).
    ///
    /// # Errors
    ///
    /// As [`Self::atomic_u64`].
    pub fn read_u64(&self, gpa: u64) -> Result<u64, GuestAccessError> {
        Ok(self.atomic_u64(gpa)?.load(Ordering::Acquire))
    }

    /// Writes the `u64` at `gpa` (release).
    ///
    /// # Errors
    ///
    /// As [`Self::atomic_u64`].
    pub fn write_u64(&self, gpa: u64, value: u64) -> Result<(), GuestAccessError> {
        self.atomic_u64(gpa)?.store(value, Ordering::Release);
        Ok(())
    }

    /// Writes the `u32` at `gpa` (release).
    ///
    /// # Errors
    ///
    /// As [`Self::atomic_u32`].
    pub fn write_u32(&self, gpa: u64, value: u32) -> Result<(), GuestAccessError> {
        self.atomic_u32(gpa)?.store(value, Ordering::Release);
        Ok(())
    }
}

/// [`GuestMemory::discard`] failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscardError {
    /// Outside guest memory.
    #[error("discard range is outside guest memory")]
    Range(#[from] GuestAccessError),
    /// Not whole pages.
    #[error("discard range {gpa:#x}+{len:#x} is not page-aligned")]
    Unaligned {
        /// Start.
        gpa: u64,
        /// Length in bytes.
        len: usize,
    },
    /// `madvise` failed.
    #[error("madvise(MADV_DONTNEED) failed")]
    Madvise(#[source] io::Error),
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`, guard pages included; no
        // reference into it outlives `self` (atomics borrow `self`).
        let rc = unsafe {
            libc::munmap(
                self.ptr.as_ptr().sub(GUARD_BYTES).cast(),
                self.len + 2 * GUARD_BYTES,
            )
        };
        if rc != 0 {
            tracing::error!(
                error = %io::Error::last_os_error(),
                "munmap of guest memory failed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_must_be_whole_pages() {
        assert!(matches!(GuestMemory::new(0), Err(MapMemoryError::Size(0))));
        assert!(matches!(
            GuestMemory::new(4097),
            Err(MapMemoryError::Size(4097))
        ));
    }

    #[test]
    fn bounds_are_checked() {
        let mem = GuestMemory::new(8192).unwrap();
        mem.write(8190, &[1, 2]).unwrap();
        let mut buf = [0u8; 2];
        mem.read(8190, &mut buf).unwrap();
        assert_eq!(buf, [1, 2]);
        assert_eq!(
            mem.write(8191, &[1, 2]),
            Err(GuestAccessError::OutOfRange {
                gpa: 8191,
                len: 2,
                size: 8192
            })
        );
        assert!(mem.read(u64::MAX, &mut buf).is_err());
        assert!(mem.read_u64(8192).is_err());
        assert_eq!(
            mem.read_u64(4),
            Err(GuestAccessError::Misaligned { gpa: 4, align: 8 })
        );
    }

    #[test]
    fn discard_zeroes_pages_and_checks_the_range() {
        let mem = GuestMemory::new(4 * 4096).unwrap();
        mem.write_u64(4096, 7).unwrap();
        mem.write_u64(8192, 9).unwrap();
        mem.discard(4096, 4096).unwrap();
        assert_eq!(mem.read_u64(4096).unwrap(), 0);
        assert_eq!(mem.read_u64(8192).unwrap(), 9);
        assert!(matches!(
            mem.discard(4096, 100),
            Err(DiscardError::Unaligned { .. })
        ));
        assert!(matches!(
            mem.discard(3 * 4096, 8192),
            Err(DiscardError::Range(_))
        ));
    }

    #[test]
    fn atomics_and_bytes_agree() {
        let mem = GuestMemory::new(4096).unwrap();
        mem.write_u64(8, 0x1122_3344_5566_7788).unwrap();
        let mut buf = [0u8; 8];
        mem.read(8, &mut buf).unwrap();
        assert_eq!(u64::from_le_bytes(buf), 0x1122_3344_5566_7788);
        mem.write_u32(16, 7).unwrap();
        assert_eq!(mem.read_u64(16).unwrap(), 7);
        let range = mem.host_range();
        assert_eq!(range.len, 4096);
        assert_eq!(range.addr % 4096, 0);
    }
}

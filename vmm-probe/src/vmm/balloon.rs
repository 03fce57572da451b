//! The host side of the paravirtual balloon.
//!
//! The VMM writes a target into the control page; the guest's agent (see
//! [`crate::guest::program`]) moves its balloon towards it a batch per tick and reports each
//! batch's page frames on a port. Here those reports are checked and acted on: pages the guest
//! gives up are released with `MADV_DONTNEED`, so the VMM process's resident memory drops;
//! pages it takes back are only struck off, since the guest's own writes fault them in again.
//!
//! The guest is not trusted: a frame outside RAM, inside the VMM-owned first MiB, given twice
//! or taken back without having been given is ignored and counted in
//! [`BalloonStatus::rejected_pages_total`], so a buggy or hostile guest cannot make the VMM
//! release memory it relies on or corrupt the accounting.

use serde::Serialize;

use crate::guest::layout::{self, balloon};
use crate::vstate::GuestMemory;

/// What the balloon holds and what the guest reports, as the control API shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BalloonStatus {
    /// What the VMM asked for, MiB.
    pub target_mib: u32,
    /// Bytes the guest has given up and the VMM has released.
    pub actual_bytes: u64,
    /// Bytes the guest reports free (above its working set, not in the balloon).
    pub guest_free_bytes: u64,
    /// Pages given up since the VM started.
    pub inflated_pages_total: u64,
    /// Pages taken back since the VM started.
    pub deflated_pages_total: u64,
    /// Reported pages ignored as invalid.
    pub rejected_pages_total: u64,
}

/// Which way a report goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    Inflate,
    Deflate,
}

/// The VMM's record of the balloon, under a mutex in the VM's shared state (only vCPU 0
/// reports; the handle reads).
#[derive(Debug, Default)]
pub(super) struct BalloonState {
    target_mib: u32,
    /// One bit per guest page: held by the balloon. Allocated at the first inflate.
    held: Vec<u64>,
    held_pages: u64,
    inflated_total: u64,
    deflated_total: u64,
    rejected_total: u64,
    warned: bool,
}

impl BalloonState {
    pub(super) fn set_target(&mut self, target_mib: u32) {
        self.target_mib = target_mib;
    }

    pub(super) fn status(&self, memory: &GuestMemory) -> BalloonStatus {
        let free_pages = memory
            .read_u64(layout::BALLOON_GPA + balloon::FREE_PAGES)
            .unwrap_or(0);
        BalloonStatus {
            target_mib: self.target_mib,
            actual_bytes: self.held_pages * layout::PAGE_SIZE,
            guest_free_bytes: free_pages.saturating_mul(layout::PAGE_SIZE),
            inflated_pages_total: self.inflated_total,
            deflated_pages_total: self.deflated_total,
            rejected_pages_total: self.rejected_total,
        }
    }

    /// Handles one report of `count` pages from the guest.
    pub(super) fn report(&mut self, memory: &GuestMemory, direction: Direction, count: u32) {
        let pages = memory.len() as u64 / layout::PAGE_SIZE;
        let first_pfn = layout::WORKING_SET_GPA / layout::PAGE_SIZE;
        if self.held.is_empty() {
            self.held = vec![0; pages.div_ceil(64) as usize];
        }
        let count = u64::from(count);
        let mut rejected = count.saturating_sub(layout::BALLOON_BATCH_PAGES);
        // Runs of consecutive frames, released with one madvise each.
        let mut run: Option<(u64, u64)> = None;
        for i in 0..count.min(layout::BALLOON_BATCH_PAGES) {
            let Ok(pfn) = memory.read_u64(layout::BALLOON_PFNS_GPA + i * 8) else {
                rejected += 1;
                continue;
            };
            if pfn < first_pfn || pfn >= pages {
                rejected += 1;
                continue;
            }
            let (word, bit) = ((pfn / 64) as usize, 1u64 << (pfn % 64));
            let is_held = self.held[word] & bit != 0;
            match direction {
                Direction::Inflate if !is_held => {
                    self.held[word] |= bit;
                    self.held_pages += 1;
                    self.inflated_total += 1;
                    run = match run {
                        Some((start, len)) if start + len == pfn => Some((start, len + 1)),
                        Some((start, len)) if pfn + 1 == start => Some((pfn, len + 1)),
                        Some(done) => {
                            release(memory, done);
                            Some((pfn, 1))
                        }
                        None => Some((pfn, 1)),
                    };
                }
                Direction::Deflate if is_held => {
                    self.held[word] &= !bit;
                    self.held_pages -= 1;
                    self.deflated_total += 1;
                }
                _ => rejected += 1,
            }
        }
        if let Some(done) = run {
            release(memory, done);
        }
        if rejected > 0 {
            self.rejected_total += rejected;
            if !self.warned {
                self.warned = true;
                tracing::warn!(
                    rejected,
                    ?direction,
                    "guest balloon report named invalid pages; ignored"
                );
            }
        }
    }
}

/// Releases `len` pages from frame `start`.
fn release(memory: &GuestMemory, (start, len): (u64, u64)) {
    let gpa = start * layout::PAGE_SIZE;
    let bytes = (len * layout::PAGE_SIZE) as usize;
    if let Err(e) = memory.discard(gpa, bytes) {
        tracing::error!(gpa, bytes, error = %e, "releasing balloon pages failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn guest(mib: usize) -> GuestMemory {
        GuestMemory::new(mib * MIB).unwrap()
    }

    fn put_pfns(memory: &GuestMemory, pfns: &[u64]) {
        for (i, pfn) in pfns.iter().enumerate() {
            memory
                .write_u64(layout::BALLOON_PFNS_GPA + i as u64 * 8, *pfn)
                .unwrap();
        }
    }

    #[test]
    fn inflate_releases_pages_and_deflate_strikes_them_off() {
        let memory = guest(4);
        let top = 4 * MIB as u64 / layout::PAGE_SIZE;
        for pfn in top - 3..top {
            memory.write_u64(pfn * layout::PAGE_SIZE, 0xAA).unwrap();
        }
        let mut state = BalloonState::default();
        state.set_target(1);
        put_pfns(&memory, &[top - 1, top - 2, top - 3]);
        state.report(&memory, Direction::Inflate, 3);
        for pfn in top - 3..top {
            assert_eq!(memory.read_u64(pfn * layout::PAGE_SIZE).unwrap(), 0);
        }
        let status = state.status(&memory);
        assert_eq!(status.actual_bytes, 3 * layout::PAGE_SIZE);
        assert_eq!(status.target_mib, 1);
        assert_eq!(status.inflated_pages_total, 3);

        put_pfns(&memory, &[top - 3]);
        state.report(&memory, Direction::Deflate, 1);
        let status = state.status(&memory);
        assert_eq!(status.actual_bytes, 2 * layout::PAGE_SIZE);
        assert_eq!(status.deflated_pages_total, 1);
        assert_eq!(status.rejected_pages_total, 0);
    }

    #[test]
    fn invalid_frames_are_ignored_and_counted() {
        let memory = guest(4);
        let top = 4 * MIB as u64 / layout::PAGE_SIZE;
        // The control page must survive a guest naming it.
        memory
            .write_u64(layout::CONTROL_GPA, layout::CONTROL_MAGIC)
            .unwrap();
        let mut state = BalloonState::default();
        put_pfns(
            &memory,
            &[
                layout::CONTROL_GPA / layout::PAGE_SIZE,
                top,
                u64::MAX,
                top - 1,
                top - 1,
            ],
        );
        state.report(&memory, Direction::Inflate, 5);
        assert_eq!(
            memory.read_u64(layout::CONTROL_GPA).unwrap(),
            layout::CONTROL_MAGIC
        );
        let status = state.status(&memory);
        assert_eq!(status.actual_bytes, layout::PAGE_SIZE);
        assert_eq!(status.rejected_pages_total, 4);

        // Taking back a page never given, and a count larger than the buffer.
        put_pfns(&memory, &[top - 2]);
        state.report(&memory, Direction::Deflate, 1);
        state.report(&memory, Direction::Deflate, u32::MAX);
        // The stale buffer still names top - 1 (held: taken back) among 511 invalid frames.
        let status = state.status(&memory);
        assert_eq!(status.rejected_pages_total, u64::from(u32::MAX) + 4);
        assert_eq!(status.actual_bytes, 0);
    }
}

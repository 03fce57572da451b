//! The byte layout of a KVM stats file: header, id string, descriptors and data block.
//!
//! Everything here works on byte slices, so that the parser can be tested on synthetic and
//! malformed images without a kernel. All offsets and lengths come from the kernel and are
//! checked before use: odd data gives an [`OpenStatsError`], never a panic.

use std::sync::Arc;

use super::{OpenStatsError, StatBase, StatDesc, StatKind, StatUnit, StatValue};

/// Size of `struct kvm_stats_header`.
pub(crate) const HEADER_SIZE: usize = 24;
/// Size of `struct kvm_stats_desc` without its trailing name.
pub(crate) const DESC_FIXED_SIZE: usize = 16;
/// Largest name size accepted (the kernel uses 48).
pub(crate) const MAX_NAME_SIZE: u32 = 512;
/// Largest descriptor count accepted (kernels have under 100 per VM or vCPU).
pub(crate) const MAX_DESCRIPTORS: u32 = 8192;
/// Largest data block accepted, in bytes.
pub(crate) const MAX_DATA_BYTES: u64 = 16 << 20;

// The kernel ABI, as kvm-bindings has it; checked so that a change there cannot go unnoticed.
const _: () = assert!(size_of::<kvm_bindings::kvm_stats_header>() == HEADER_SIZE);
const _: () = assert!(size_of::<kvm_bindings::kvm_stats_desc>() == DESC_FIXED_SIZE);

const TYPE_MASK: u32 = kvm_bindings::KVM_STATS_TYPE_MASK;
const TYPE_SHIFT: u32 = kvm_bindings::KVM_STATS_TYPE_SHIFT;
const UNIT_MASK: u32 = kvm_bindings::KVM_STATS_UNIT_MASK;
const UNIT_SHIFT: u32 = kvm_bindings::KVM_STATS_UNIT_SHIFT;
const BASE_MASK: u32 = kvm_bindings::KVM_STATS_BASE_MASK;
const BASE_SHIFT: u32 = kvm_bindings::KVM_STATS_BASE_SHIFT;

/// The header at the start of a stats file (`struct kvm_stats_header`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsHeader {
    /// Reserved, 0 so far.
    pub flags: u32,
    /// Size of the id string and of each descriptor's name, with the trailing NUL.
    pub name_size: u32,
    /// Number of descriptors.
    pub num_desc: u32,
    /// File offset of the id string.
    pub id_offset: u32,
    /// File offset of the descriptor block.
    pub desc_offset: u32,
    /// File offset of the data block.
    pub data_offset: u32,
}

impl StatsHeader {
    /// Decodes the header (native byte order, as the kernel writes it).
    pub(crate) fn decode(bytes: &[u8; HEADER_SIZE]) -> Self {
        let word = |i: usize| {
            let mut w = [0u8; 4];
            w.copy_from_slice(&bytes[i * 4..i * 4 + 4]);
            u32::from_ne_bytes(w)
        };
        Self {
            flags: word(0),
            name_size: word(1),
            num_desc: word(2),
            id_offset: word(3),
            desc_offset: word(4),
            data_offset: word(5),
        }
    }

    /// Checks the sizes against our limits.
    pub(crate) fn check(&self) -> Result<(), OpenStatsError> {
        if self.name_size == 0 || self.name_size > MAX_NAME_SIZE {
            return Err(OpenStatsError::NameSize {
                name_size: self.name_size,
            });
        }
        if self.num_desc > MAX_DESCRIPTORS {
            return Err(OpenStatsError::TooManyDescriptors {
                num_desc: self.num_desc,
            });
        }
        Ok(())
    }

    /// Size of one descriptor with its name.
    pub(crate) fn desc_size(&self) -> usize {
        DESC_FIXED_SIZE + self.name_size as usize
    }

    /// Size of the descriptor block (bounded by the limits of [`Self::check`]).
    pub(crate) fn desc_block_size(&self) -> usize {
        self.desc_size() * self.num_desc as usize
    }
}

/// Reads a NUL-terminated UTF-8 string from a fixed-size field.
fn c_string(field: &[u8]) -> Result<&str, CStringError> {
    let end = field
        .iter()
        .position(|&b| b == 0)
        .ok_or(CStringError::NotTerminated)?;
    std::str::from_utf8(&field[..end]).map_err(|_| CStringError::NotUtf8)
}

enum CStringError {
    NotTerminated,
    NotUtf8,
}

/// Decodes the id string (`kvm-<pid>` or `kvm-<pid>/vcpu-<n>`).
pub(crate) fn decode_id(field: &[u8]) -> Result<String, OpenStatsError> {
    match c_string(field) {
        Ok(s) => Ok(s.to_owned()),
        Err(CStringError::NotTerminated) => Err(OpenStatsError::IdNotTerminated),
        Err(CStringError::NotUtf8) => Err(OpenStatsError::IdNotUtf8),
    }
}

/// Decodes the descriptor block of `header.num_desc` descriptors.
pub(crate) fn decode_descriptors(
    header: &StatsHeader,
    block: &[u8],
) -> Result<Vec<StatDesc>, OpenStatsError> {
    let desc_size = header.desc_size();
    let mut descs = Vec::with_capacity(header.num_desc as usize);
    for (index, raw) in block.chunks_exact(desc_size).enumerate() {
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        let u32_at = |i: usize| u32::from_ne_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]);
        let flags = u32_at(0);
        let exponent = i16::from_ne_bytes([raw[4], raw[5]]);
        let size = u16::from_ne_bytes([raw[6], raw[7]]);
        let offset = u32_at(8);
        let bucket_size = u32_at(12);
        let name = match c_string(&raw[DESC_FIXED_SIZE..]) {
            Ok(name) => name,
            Err(CStringError::NotTerminated) => {
                return Err(OpenStatsError::NameNotTerminated { index });
            }
            Err(CStringError::NotUtf8) => return Err(OpenStatsError::NameNotUtf8 { index }),
        };
        descs.push(StatDesc {
            name: Arc::from(name),
            kind: StatKind::from_raw((flags & TYPE_MASK) >> TYPE_SHIFT),
            unit: StatUnit::from_raw((flags & UNIT_MASK) >> UNIT_SHIFT),
            base: StatBase::from_raw((flags & BASE_MASK) >> BASE_SHIFT),
            exponent,
            size,
            bucket_size,
            offset,
        });
    }
    if descs.len() != header.num_desc as usize {
        // Only reachable if the caller passed a block of the wrong size.
        return Err(OpenStatsError::ShortRead {
            what: "descriptors",
            offset: u64::from(header.desc_offset),
            wanted: header.desc_block_size(),
            got: block.len(),
        });
    }
    Ok(descs)
}

/// Size of the data block the descriptors cover: the end of the furthest value.
pub(crate) fn data_block_size(descs: &[StatDesc]) -> Result<usize, OpenStatsError> {
    let end = descs
        .iter()
        .map(|d| u64::from(d.offset) + u64::from(d.size) * 8)
        .max()
        .unwrap_or(0);
    if end > MAX_DATA_BYTES {
        return Err(OpenStatsError::DataTooLarge { bytes: end });
    }
    usize::try_from(end).map_err(|_| OpenStatsError::DataTooLarge { bytes: end })
}

/// Splits a data block into values, one [`StatValue`] per descriptor. A descriptor whose
/// values fall outside `data` (which [`data_block_size`] rules out) gets no values.
pub(crate) fn decode_values(descs: &[StatDesc], data: &[u8]) -> Vec<StatValue> {
    descs
        .iter()
        .map(|d| {
            let start = d.offset as usize;
            let end = start + usize::from(d.size) * 8;
            let values = data
                .get(start..end)
                .map(|bytes| {
                    bytes
                        .chunks_exact(8)
                        .map(|c| {
                            u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                        })
                        .collect()
                })
                .unwrap_or_default();
            StatValue {
                name: Arc::clone(&d.name),
                kind: d.kind,
                unit: d.unit,
                base: d.base,
                exponent: d.exponent,
                values,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name_size: u32, num_desc: u32) -> StatsHeader {
        StatsHeader {
            flags: 0,
            name_size,
            num_desc,
            id_offset: 24,
            desc_offset: 24 + name_size,
            data_offset: num_desc
                .wrapping_mul(16 + name_size)
                .wrapping_add(24 + name_size),
        }
    }

    fn desc_bytes(
        flags: u32,
        exponent: i16,
        size: u16,
        offset: u32,
        name: &[u8],
        name_size: usize,
    ) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(&exponent.to_ne_bytes());
        b.extend_from_slice(&size.to_ne_bytes());
        b.extend_from_slice(&offset.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        let mut field = name.to_vec();
        field.resize(name_size, 0);
        b.extend_from_slice(&field);
        b
    }

    #[test]
    fn header_decodes_native_words() {
        let mut raw = [0u8; HEADER_SIZE];
        for (i, v) in [0u32, 48, 3, 24, 72, 264].iter().enumerate() {
            raw[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
        }
        assert_eq!(StatsHeader::decode(&raw), header(48, 3));
        assert!(header(48, 3).check().is_ok());
    }

    #[test]
    fn header_limits() {
        assert!(matches!(
            header(0, 1).check(),
            Err(OpenStatsError::NameSize { name_size: 0 })
        ));
        assert!(matches!(
            header(MAX_NAME_SIZE + 1, 1).check(),
            Err(OpenStatsError::NameSize { .. })
        ));
        assert!(matches!(
            header(48, u32::MAX).check(),
            Err(OpenStatsError::TooManyDescriptors { num_desc: u32::MAX })
        ));
    }

    #[test]
    fn descriptors_decode_flags_and_names() {
        let flags = kvm_bindings::KVM_STATS_TYPE_LOG_HIST
            | kvm_bindings::KVM_STATS_UNIT_SECONDS
            | kvm_bindings::KVM_STATS_BASE_POW10;
        let mut block = desc_bytes(0, 0, 1, 0, b"exits", 16);
        block.extend(desc_bytes(flags, -9, 32, 8, b"halt_wait_hist", 16));
        let descs = decode_descriptors(&header(16, 2), &block).expect("decodes");
        assert_eq!(&*descs[0].name, "exits");
        assert_eq!(descs[0].kind, StatKind::Cumulative);
        assert_eq!(descs[1].kind, StatKind::LogHist);
        assert_eq!(descs[1].unit, StatUnit::Seconds);
        assert_eq!(descs[1].base, StatBase::Pow10);
        assert_eq!(descs[1].exponent, -9);
        assert_eq!(descs[1].size, 32);
        assert_eq!(data_block_size(&descs).expect("small"), 8 + 32 * 8);
    }

    #[test]
    fn unknown_flag_values_are_kept_not_rejected() {
        let block = desc_bytes(0xf | 0xf0 | 0xf00, 0, 1, 0, b"future", 16);
        let d = &decode_descriptors(&header(16, 1), &block).expect("decodes")[0];
        assert_eq!(d.kind, StatKind::Unknown(0xf));
        assert_eq!(d.unit, StatUnit::Unknown(0xf));
        assert_eq!(d.base, StatBase::Unknown(0xf));
    }

    #[test]
    fn bad_names_are_errors() {
        let block = desc_bytes(0, 0, 1, 0, &[b'x'; 16], 16);
        assert!(matches!(
            decode_descriptors(&header(16, 1), &block),
            Err(OpenStatsError::NameNotTerminated { index: 0 })
        ));
        let mut block = desc_bytes(0, 0, 1, 0, b"ok", 16);
        block.extend(desc_bytes(0, 0, 1, 8, &[0xff, 0xfe], 16));
        assert!(matches!(
            decode_descriptors(&header(16, 2), &block),
            Err(OpenStatsError::NameNotUtf8 { index: 1 })
        ));
        assert!(matches!(
            decode_id(b"kvm-1"),
            Err(OpenStatsError::IdNotTerminated)
        ));
        assert_eq!(decode_id(b"kvm-1\0\0\0").expect("id"), "kvm-1");
    }

    #[test]
    fn short_descriptor_block_is_an_error() {
        let block = desc_bytes(0, 0, 1, 0, b"exits", 16);
        assert!(matches!(
            decode_descriptors(&header(16, 2), &block),
            Err(OpenStatsError::ShortRead { .. })
        ));
    }

    #[test]
    fn huge_data_block_is_an_error() {
        let block = desc_bytes(0, 0, u16::MAX, u32::MAX, b"far", 16);
        let descs = decode_descriptors(&header(16, 1), &block).expect("decodes");
        assert!(matches!(
            data_block_size(&descs),
            Err(OpenStatsError::DataTooLarge { .. })
        ));
    }

    #[test]
    fn values_outside_the_data_are_empty_not_a_panic() {
        let block = desc_bytes(0, 0, 2, 8, b"two", 16);
        let descs = decode_descriptors(&header(16, 1), &block).expect("decodes");
        let values = decode_values(&descs, &[0u8; 16]);
        assert!(values[0].values.is_empty());
        let mut data = vec![0u8; 8];
        data.extend(7u64.to_ne_bytes());
        data.extend(9u64.to_ne_bytes());
        assert_eq!(decode_values(&descs, &data)[0].values, vec![7, 9]);
    }
}

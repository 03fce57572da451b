//! The stats parser on synthetic stats files: a well-formed image in a temporary file is read
//! through the same `pread` path as a real KVM stats fd, and malformed images give errors,
//! never panics.

use std::fs::File;
use std::io::Write as _;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt as _;

use fleetmind_vmm_probe::stats::{
    KvmStats, OpenStatsError, ReadStatsError, StatBase, StatKind, StatUnit,
};

const NAME_SIZE: usize = 48;
const CUMULATIVE: u32 = 0;
const SECONDS_NS: u32 = 0x20; // KVM_STATS_UNIT_SECONDS, base pow10
const LOG_HIST: u32 = 4;
const POW2: u32 = 0x100;
const BYTES: u32 = 0x10;

struct Desc {
    flags: u32,
    exponent: i16,
    size: u16,
    offset: u32,
    name: Vec<u8>,
}

fn desc(flags: u32, exponent: i16, size: u16, offset: u32, name: &str) -> Desc {
    Desc {
        flags,
        exponent,
        size,
        offset,
        name: name.as_bytes().to_vec(),
    }
}

/// A stats file: header, id, descriptors, data, laid out like the kernel does.
struct Image {
    flags: u32,
    name_size: usize,
    num_desc: Option<u32>,
    id: Vec<u8>,
    descs: Vec<Desc>,
    data: Vec<u64>,
    data_offset: Option<u32>,
}

impl Image {
    fn good() -> Self {
        Self {
            flags: 0,
            name_size: NAME_SIZE,
            num_desc: None,
            id: b"kvm-42/vcpu-0".to_vec(),
            descs: vec![
                desc(CUMULATIVE, 0, 1, 0, "exits"),
                desc(SECONDS_NS | CUMULATIVE, -9, 1, 8, "halt_wait_ns"),
                desc(SECONDS_NS | LOG_HIST, -9, 4, 16, "halt_wait_hist"),
                desc(BYTES | POW2 | 1, 12, 1, 48, "resident_pages"),
            ],
            data: vec![10, 2_500_000_000, 1, 2, 3, 4, 3],
            data_offset: None,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let id_offset = 24usize;
        let desc_offset = id_offset + self.name_size;
        let data_offset = self.data_offset.map_or(
            desc_offset + self.descs.len() * (16 + self.name_size),
            |o| o as usize,
        );
        let num_desc = self
            .num_desc
            .unwrap_or(u32::try_from(self.descs.len()).expect("few"));
        let mut b = Vec::new();
        for word in [
            self.flags,
            u32::try_from(self.name_size).expect("small"),
            num_desc,
            u32::try_from(id_offset).expect("small"),
            u32::try_from(desc_offset).expect("small"),
            u32::try_from(data_offset).expect("small"),
        ] {
            b.extend(word.to_ne_bytes());
        }
        b.extend(field(&self.id, self.name_size));
        for d in &self.descs {
            b.extend(d.flags.to_ne_bytes());
            b.extend(d.exponent.to_ne_bytes());
            b.extend(d.size.to_ne_bytes());
            b.extend(d.offset.to_ne_bytes());
            b.extend(0u32.to_ne_bytes());
            b.extend(field(&d.name, self.name_size));
        }
        b.resize(b.len().max(data_offset), 0);
        b.truncate(data_offset);
        for v in &self.data {
            b.extend(v.to_ne_bytes());
        }
        b
    }
}

/// `bytes` NUL-padded (or cut) to `size`.
fn field(bytes: &[u8], size: usize) -> Vec<u8> {
    let mut f = bytes.to_vec();
    f.resize(size, 0);
    f
}

fn file_with(bytes: &[u8]) -> File {
    let mut file = tempfile::tempfile().expect("tempfile");
    file.write_all(bytes).expect("write image");
    file
}

fn open(bytes: &[u8]) -> Result<KvmStats, OpenStatsError> {
    KvmStats::from_stats_fd(OwnedFd::from(file_with(bytes)))
}

#[test]
fn a_good_image_parses_and_reads() {
    let stats = open(&Image::good().bytes()).expect("good image");
    assert_eq!(stats.id(), "kvm-42/vcpu-0");
    assert_eq!(stats.header().num_desc, 4);
    let names: Vec<&str> = stats.descriptors().iter().map(|d| &*d.name).collect();
    assert_eq!(
        names,
        ["exits", "halt_wait_ns", "halt_wait_hist", "resident_pages"]
    );
    let hist = stats.descriptor("halt_wait_hist").expect("hist");
    assert_eq!(
        (hist.kind, hist.unit, hist.size),
        (StatKind::LogHist, StatUnit::Seconds, 4)
    );

    let snap = stats.read().expect("read");
    assert_eq!(snap.get("exits"), Some(10));
    assert_eq!(snap.get("halt_wait_ns"), Some(2_500_000_000));
    assert!((snap.scaled("halt_wait_ns").expect("scaled") - 2.5).abs() < 1e-9);
    assert_eq!(
        snap.get("halt_wait_hist"),
        None,
        "a histogram has no single value"
    );
    assert_eq!(
        snap.stat("halt_wait_hist").expect("hist").values,
        [1, 2, 3, 4]
    );
    let pages = snap.stat("resident_pages").expect("pow2");
    assert_eq!(
        (pages.kind, pages.unit, pages.base),
        (StatKind::Instant, StatUnit::Bytes, StatBase::Pow2)
    );
    assert_eq!(snap.scaled("resident_pages"), Some(3.0 * 4096.0));
    assert_eq!(snap.get("no_such_stat"), None);
}

#[test]
fn the_fd_is_reread_with_pread_and_sees_new_values() {
    let image = Image::good();
    let bytes = image.bytes();
    let file = file_with(&bytes);
    let writer = file.try_clone().expect("clone");
    let stats = KvmStats::from_stats_fd(OwnedFd::from(file)).expect("good image");
    let first = stats.read().expect("read");
    let data_offset = u64::from(stats.header().data_offset);
    writer
        .write_all_at(&25u64.to_ne_bytes(), data_offset)
        .expect("update exits");
    let second = stats.read().expect("read again");
    assert_eq!(second.delta(&first, "exits"), Some(15));
    assert_eq!(first.delta(&second, "exits"), None, "went down");

    writer.set_len(data_offset + 8).expect("shrink");
    assert!(matches!(
        stats.read(),
        Err(ReadStatsError::ShortRead { wanted: 56, got: 8 })
    ));
}

#[test]
fn truncated_header_is_an_error() {
    let bytes = Image::good().bytes();
    assert!(matches!(
        open(&bytes[..10]),
        Err(OpenStatsError::ShortRead {
            what: "header",
            wanted: 24,
            got: 10,
            ..
        })
    ));
    assert!(matches!(
        open(&[]),
        Err(OpenStatsError::ShortRead { what: "header", .. })
    ));
}

#[test]
fn offsets_past_the_end_are_errors() {
    // Descriptor block cut short.
    let bytes = Image::good().bytes();
    assert!(matches!(
        open(&bytes[..100]),
        Err(OpenStatsError::ShortRead {
            what: "descriptors",
            ..
        })
    ));
    // Data block beyond the end of the file.
    let mut image = Image::good();
    image.data_offset = Some(1 << 20);
    let mut bytes = image.bytes();
    bytes.truncate(400);
    assert!(matches!(
        open(&bytes),
        Err(OpenStatsError::ShortRead { what: "data", .. })
    ));
    // A descriptor whose values lie past the data.
    let mut image = Image::good();
    image.descs.push(desc(CUMULATIVE, 0, 1, 4096, "far_away"));
    let err = open(&image.bytes()).expect_err("past the end");
    assert!(
        matches!(err, OpenStatsError::ShortRead { what: "data", .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("truncated"), "{err}");
    // A descriptor far beyond any sane data block.
    let mut image = Image::good();
    image
        .descs
        .push(desc(CUMULATIVE, 0, u16::MAX, u32::MAX, "absurd"));
    assert!(matches!(
        open(&image.bytes()),
        Err(OpenStatsError::DataTooLarge { .. })
    ));
}

#[test]
fn names_and_ids_must_be_nul_terminated_utf8() {
    let mut image = Image::good();
    image.descs[2].name = vec![b'n'; NAME_SIZE];
    assert!(matches!(
        open(&image.bytes()),
        Err(OpenStatsError::NameNotTerminated { index: 2 })
    ));
    let mut image = Image::good();
    image.descs[1].name = vec![0xc3, 0x28];
    assert!(matches!(
        open(&image.bytes()),
        Err(OpenStatsError::NameNotUtf8 { index: 1 })
    ));
    let mut image = Image::good();
    image.id = vec![b'k'; NAME_SIZE];
    assert!(matches!(
        open(&image.bytes()),
        Err(OpenStatsError::IdNotTerminated)
    ));
}

#[test]
fn absurd_header_sizes_are_errors() {
    let mut image = Image::good();
    image.num_desc = Some(u32::MAX);
    assert!(matches!(
        open(&image.bytes()),
        Err(OpenStatsError::TooManyDescriptors { num_desc: u32::MAX })
    ));
    let mut image = Image::good();
    image.num_desc = Some(5000);
    assert!(matches!(
        open(&image.bytes()),
        Err(OpenStatsError::ShortRead {
            what: "descriptors",
            ..
        })
    ));
    let mut bytes = Image::good().bytes();
    bytes[4..8].copy_from_slice(&0u32.to_ne_bytes());
    assert!(matches!(
        open(&bytes),
        Err(OpenStatsError::NameSize { name_size: 0 })
    ));
    bytes[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
    assert!(matches!(open(&bytes), Err(OpenStatsError::NameSize { .. })));
}

#[test]
fn zero_descriptors_is_an_empty_snapshot() {
    let mut image = Image::good();
    image.descs.clear();
    image.data.clear();
    let stats = open(&image.bytes()).expect("empty is valid");
    assert!(stats.read().expect("read").values.is_empty());
}

/// Flips random bytes and cuts the image at random lengths: whatever the result, no panic.
#[test]
fn mangled_images_never_panic() {
    let good = Image::good().bytes();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let file = tempfile::tempfile().expect("tempfile");
    let (mut ok, mut err) = (0, 0);
    for _ in 0..2000 {
        let mut bytes = good.clone();
        for _ in 0..(next() % 6 + 1) {
            let at = usize::try_from(next() % bytes.len() as u64).expect("small");
            bytes[at] = u8::try_from(next() & 0xff).expect("byte");
        }
        let len = if next() % 4 == 0 {
            usize::try_from(next() % bytes.len() as u64).expect("small")
        } else {
            bytes.len()
        };
        file.set_len(0).expect("truncate");
        file.write_all_at(&bytes[..len], 0).expect("write");
        match KvmStats::from_stats_fd(OwnedFd::from(file.try_clone().expect("clone"))) {
            Ok(stats) => {
                let snap = stats.read().expect("a parsed image reads");
                for v in &snap.values {
                    let _ = (snap.get(&v.name), snap.scaled(&v.name));
                }
                ok += 1;
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                err += 1;
            }
        }
    }
    println!("mangled images: {ok} parsed, {err} rejected");
    assert!(err > 0);
}

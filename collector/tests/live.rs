//! The host collector against this machine's own `/proc` and `/sys`: structure and ranges,
//! since the values are whatever the machine is doing.

mod common;

use std::time::Duration;

use common::assert_in_range;
use fleetmind_collector::{HostCollector, HostCollectorConfig, hostname};

#[test]
fn live_host_sample_is_well_formed() {
    let mut collector = HostCollector::new(HostCollectorConfig::local(hostname("/proc")));
    assert!(
        collector
            .sample_at(1_000, Duration::ZERO)
            .expect("reads /proc")
            .is_none()
    );
    let s = collector
        .sample_at(2_000, Duration::from_secs(1))
        .expect("reads /proc")
        .expect("primed");
    assert_in_range(&s);
    assert_eq!(s.interval_ms, 1_000);
    assert!(s.cpus > 0);
    // A CPU without a jiffy elapsed since the first read is left out, so at most all of them.
    assert!(s.per_cpu.len() <= s.cpus as usize);
    assert!(s.per_cpu.windows(2).all(|w| w[0].cpu < w[1].cpu));
    assert!(s.mem.total_bytes > 0);
    assert!(s.mem.available_bytes > 0);
    assert!(!s.numa.is_empty());
    assert!(s.numa.windows(2).all(|w| w[0].node < w[1].node));
    for node in &s.numa {
        assert_eq!(node.distances.len(), s.numa.len(), "{node:?}");
        assert!(node.mem_total_bytes > 0 || node.cpus.is_empty(), "{node:?}");
    }
    let cpus_in_nodes: usize = s.numa.iter().map(|n| n.cpus.len()).sum();
    assert!(
        cpus_in_nodes >= s.cpus as usize,
        "every online CPU is in a node"
    );
}

//! Scenarios on synthetic, noisy fleets: one per class, recovery, dedup, capability limits.

use fleetmind_schema::{
    ActionKind, Incident, IncidentClass, IncidentStatus, Recommendation, Record, VmmKind,
};

use super::cpuset::parse_cpu_list;
use super::series;
use super::test_utils::{GIB, HostSpec, MIB, Sim, VmSpec};
use super::{Correlator, CorrelatorConfig};

fn incidents(records: &[Record]) -> Vec<&Incident> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Incident(i) => Some(i),
            _ => None,
        })
        .collect()
}

fn recs(records: &[Record]) -> Vec<&Recommendation> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Recommendation(r) => Some(r),
            _ => None,
        })
        .collect()
}

/// The latest version of each incident, in order of first appearance.
fn latest(records: &[Record]) -> Vec<Incident> {
    let mut out: Vec<Incident> = Vec::new();
    for i in incidents(records) {
        match out.iter_mut().find(|o| o.id == i.id) {
            Some(o) => *o = i.clone(),
            None => out.push(i.clone()),
        }
    }
    out
}

/// The latest recommendation set of an incident, by rank.
fn latest_recs<'a>(records: &'a [Record], incident: &str) -> Vec<&'a Recommendation> {
    let all: Vec<&Recommendation> = recs(records)
        .into_iter()
        .filter(|r| r.incident_id == incident)
        .collect();
    let newest = all.iter().map(|r| r.ts).max().unwrap_or(0);
    let mut out: Vec<&Recommendation> = all.into_iter().filter(|r| r.ts == newest).collect();
    out.sort_by_key(|r| r.rank);
    out
}

fn of_class(records: &[Record], class: IncidentClass) -> Vec<Incident> {
    latest(records)
        .into_iter()
        .filter(|i| i.class == class)
        .collect()
}

fn culprit_vm(i: &Incident) -> Option<&str> {
    i.hypotheses.first().and_then(|h| h.culprit.vm.as_deref())
}

/// Host `h` with 4 CPUs: `h/victim` and `h/noisy` pinned to CPU 1, `h/idle` on CPU 2.
fn shared_cpu_fleet(noisy: VmSpec) -> Sim {
    let mut victim = VmSpec::builtin("h/victim", &[&[1]]);
    victim.load(0.6, 0.02, 100.0);
    let idle = VmSpec::builtin("h/idle", &[&[2]]);
    let mut host = HostSpec::new("h", 4);
    host.busy = vec![0.1, 0.65, 0.1, 0.1];
    Sim::new(vec![host, spare()], vec![victim, noisy, idle])
}

/// An idle 16-CPU host with room for any VM.
fn spare() -> HostSpec {
    let mut h = HostSpec::new("spare", 16);
    h.busy = vec![0.05; 16];
    h
}

fn quiet_noisy(vmm: VmmKind) -> VmSpec {
    let mut noisy = VmSpec::builtin("h/noisy", &[&[1]]);
    noisy.vmm = vmm;
    noisy.load(0.05, 0.01, 80.0);
    noisy
}

/// The io storm: the noisy VM exits 60 000 times a second and the victim waits.
fn storm(sim: &mut Sim) {
    sim.vm("h/noisy").load(0.5, 0.3, 60_000.0);
    sim.vm("h/victim").load(0.4, 0.45, 100.0);
    sim.host("h").busy[1] = 1.0;
}

fn calm(sim: &mut Sim) {
    sim.vm("h/noisy").load(0.05, 0.01, 80.0);
    sim.vm("h/victim").load(0.6, 0.02, 100.0);
    sim.host("h").busy[1] = 0.65;
}

#[test]
fn noisy_neighbour_on_a_shared_cpu_blames_the_storm_and_pins_away() {
    let mut sim = shared_cpu_fleet(quiet_noisy(VmmKind::Builtin));
    assert!(sim.run(30).is_empty(), "a calm fleet has no incidents");
    storm(&mut sim);
    let out = sim.run(20);

    let nn = of_class(&out, IncidentClass::NoisyNeighbour);
    assert_eq!(nn.len(), 1, "{:#?}", latest(&out));
    let incident = &nn[0];
    assert_eq!(incident.status, IncidentStatus::Open);
    assert_eq!(culprit_vm(incident), Some("h/noisy"));
    assert!(
        incident
            .subjects
            .iter()
            .any(|s| s.vm.as_deref() == Some("h/victim"))
    );
    let evidence = &incident.hypotheses[0].evidence;
    let victim_wait = evidence
        .iter()
        .find(|e| e.subject.vm.as_deref() == Some("h/victim") && e.series == "vcpu.0.wait_frac")
        .expect("the victim's delay is evidence");
    assert!(
        victim_wait.value >= 0.3 && victim_wait.expected < 0.1,
        "{victim_wait:?}"
    );
    assert!(
        evidence
            .iter()
            .any(|e| e.subject.vm.as_deref() == Some("h/noisy") && e.series == series::EXITS_PER_S)
    );
    assert!(
        latest(&out)
            .iter()
            .all(|i| i.class != IncidentClass::HostOvercommit),
        "one problem, one incident: {:#?}",
        latest(&out)
    );

    let recs = latest_recs(&out, &incident.id);
    let first = recs.first().expect("recommendations");
    assert_eq!(first.rank, 1);
    assert_eq!(first.spec.action, ActionKind::PinVcpus);
    for r in recs
        .iter()
        .filter(|r| r.spec.action == ActionKind::PinVcpus)
    {
        let cpus = parse_cpu_list(&r.spec.params["cpus"]).expect("a cpu list");
        assert!(!cpus.is_empty() && cpus.iter().all(|c| *c < 4), "{r:?}");
        assert!(!cpus.contains(&1), "away from the shared CPU: {r:?}");
        assert!(parse_cpu_list(&r.spec.params["vcpu"]).is_some());
        assert!(r.cost.score < 0.1 && !r.cost.summary.is_empty());
        assert!(
            r.expected_effect.contains("run-queue delay"),
            "{}",
            r.expected_effect
        );
    }
    assert_eq!(first.spec.target.vm.as_deref(), Some("h/victim"));
    assert!(
        recs.iter().all(|r| r.spec.action != ActionKind::Migrate),
        "built-in VMs do not migrate"
    );
    let ranks: Vec<u32> = recs.iter().map(|r| r.rank).collect();
    assert_eq!(
        ranks,
        (1..=u32::try_from(recs.len()).expect("few")).collect::<Vec<_>>()
    );
}

#[test]
fn without_shared_cpus_it_is_not_a_noisy_neighbour() {
    let mut victim = VmSpec::builtin("h/victim", &[&[0]]);
    victim.load(0.6, 0.02, 100.0);
    let mut noisy = VmSpec::builtin("h/noisy", &[&[2, 3], &[2, 3]]);
    noisy.load(0.05, 0.01, 80.0);
    let mut sim = Sim::new(vec![HostSpec::new("h", 4)], vec![victim, noisy]);
    sim.run(30);
    sim.vm("h/noisy").load(0.9, 0.05, 40_000.0);
    sim.vm("h/victim").load(0.4, 0.45, 100.0);
    let out = sim.run(20);

    assert!(
        of_class(&out, IncidentClass::NoisyNeighbour).is_empty(),
        "{:#?}",
        latest(&out)
    );
    let runaway = of_class(&out, IncidentClass::RunawayGuest);
    assert_eq!(runaway.len(), 1, "{:#?}", latest(&out));
    assert_eq!(culprit_vm(&runaway[0]), Some("h/noisy"));
    // The victim's delay is reported, but blamed on nothing co-located.
    let unknown = of_class(&out, IncidentClass::Unknown);
    assert_eq!(unknown.len(), 1);
    assert_eq!(unknown[0].hypotheses[0].culprit.vm, None);
}

#[test]
fn an_exit_storm_alone_is_a_runaway_guest() {
    let mut runaway = VmSpec::builtin("h/spinner", &[&[1]]);
    runaway.load(0.1, 0.01, 100.0);
    let mut neighbour = VmSpec::builtin("h/other", &[&[1]]);
    neighbour.load(0.05, 0.0, 20.0);
    let mut sim = Sim::new(vec![HostSpec::new("h", 4)], vec![runaway, neighbour]);
    sim.run(30);
    sim.vm("h/spinner").load(0.7, 0.02, 80_000.0);
    let out = sim.run(15);

    let latest = latest(&out);
    assert_eq!(latest.len(), 1, "{latest:#?}");
    assert_eq!(latest[0].class, IncidentClass::RunawayGuest);
    assert_eq!(culprit_vm(&latest[0]), Some("h/spinner"));
    let recs = latest_recs(&out, &latest[0].id);
    // Contain it away from its neighbour's CPU, then tell its owner.
    assert_eq!(recs[0].spec.action, ActionKind::PinVcpus);
    assert!(
        !parse_cpu_list(&recs[0].spec.params["cpus"])
            .expect("cpus")
            .contains(&1)
    );
    let last = recs.last().expect("recs");
    assert_eq!(last.spec.action, ActionKind::Notify);
    assert!(last.rationale.contains("io_exits"), "{}", last.rationale);
}

fn squeezed_fleet() -> Sim {
    let mut vm = VmSpec::builtin("h/squeezed", &[&[0]]);
    vm.mem_bytes = 2 * GIB;
    vm.balloon = Some((512 * MIB, 512 * MIB));
    vm.guest_free = Some(400 * MIB);
    Sim::new(vec![HostSpec::new("h", 4)], vec![vm])
}

#[test]
fn a_balloon_at_target_over_a_starving_guest_is_memory_pressure() {
    let mut sim = squeezed_fleet();
    sim.run(20);
    // The operator inflates the balloon to 1 GiB; the guest is left with 10 MiB.
    let vm = sim.vm("h/squeezed");
    vm.balloon = Some((GIB, GIB));
    vm.guest_free = Some(10 * MIB);
    let out = sim.run(10);

    let mem = of_class(&out, IncidentClass::MemoryPressure);
    assert_eq!(mem.len(), 1, "{:#?}", latest(&out));
    assert_eq!(culprit_vm(&mem[0]), Some("h/squeezed"));
    let series: Vec<&str> = mem[0].hypotheses[0]
        .evidence
        .iter()
        .map(|e| e.series.as_str())
        .collect();
    assert!(
        series.contains(&series::GUEST_FREE_BYTES)
            && series.contains(&series::BALLOON_ACTUAL_BYTES),
        "{series:?}"
    );
    let recs = latest_recs(&out, &mem[0].id);
    let first = recs.first().expect("recs");
    assert_eq!(first.spec.action, ActionKind::Balloon);
    assert_eq!(first.spec.target.vm.as_deref(), Some("h/squeezed"));
    let target: u64 = first.spec.params["target_mib"].parse().expect("number");
    let delta: i64 = first.spec.params["delta_mib"].parse().expect("number");
    assert!(
        target < 1024 && delta < 0,
        "deflate: {:?}",
        first.spec.params
    );
    assert_eq!(i64::try_from(target).expect("small") - 1024, delta);
    // Enough to bring the guest to 15 % free.
    assert!(-delta >= 290, "{delta}");
    assert!(first.cost.bytes > 0 && first.cost.duration_s > 0.0);
}

#[test]
fn a_memory_hog_under_host_pressure_gets_balloons_inflated_elsewhere() {
    let mut hog = VmSpec::builtin("h/hog", &[&[0]]);
    hog.mem_bytes = 8 * GIB;
    hog.rss_bytes = GIB;
    hog.guest_free = Some(6 * GIB);
    let mut donor = VmSpec::builtin("h/donor", &[&[1]]);
    donor.mem_bytes = 4 * GIB;
    donor.guest_free = Some(3 * GIB);
    let mut host = HostSpec::new("h", 4);
    host.mem_total = 16 * GIB;
    host.mem_available = 8 * GIB;
    let mut sim = Sim::new(vec![host], vec![hog, donor]);
    sim.run(20);
    let hog = sim.vm("h/hog");
    hog.rss_bytes = 7 * GIB;
    hog.guest_free = Some(100 * MIB);
    let host = sim.host("h");
    host.mem_available = GIB;
    host.psi_memory_some = 0.3;
    host.majfault_per_s = 5000.0;
    let out = sim.run(10);

    let mem = of_class(&out, IncidentClass::MemoryPressure);
    assert_eq!(mem.len(), 1, "{:#?}", latest(&out));
    assert_eq!(culprit_vm(&mem[0]), Some("h/hog"));
    assert!(
        mem[0].subjects.iter().any(|s| s.vm.is_none()),
        "the host is involved"
    );
    let recs = latest_recs(&out, &mem[0].id);
    let inflate = recs
        .iter()
        .find(|r| r.spec.action == ActionKind::Balloon)
        .expect("a balloon recommendation");
    assert_eq!(inflate.spec.target.vm.as_deref(), Some("h/donor"));
    let delta: i64 = inflate.spec.params["delta_mib"].parse().expect("number");
    let target: u64 = inflate.spec.params["target_mib"].parse().expect("number");
    assert!(delta >= 512, "{:?}", inflate.spec.params);
    assert!(target * MIB <= 4 * GIB);
}

#[test]
fn remote_memory_on_a_two_node_host_is_numa_imbalance() {
    let mut host = HostSpec::new("h", 4).nodes(&[&[0, 1], &[2, 3]]);
    host.node_free = vec![8 * GIB, 8 * GIB];
    let mut vm = VmSpec::builtin("h/far", &[&[0, 1], &[0, 1]]);
    vm.numa_resident = vec![(0, 100 * MIB), (1, 900 * MIB)];
    let mut sim = Sim::new(vec![host], vec![vm]);
    let out = sim.run(10);

    let numa = of_class(&out, IncidentClass::NumaImbalance);
    assert_eq!(numa.len(), 1, "{:#?}", latest(&out));
    assert_eq!(culprit_vm(&numa[0]), Some("h/far"));
    let recs = latest_recs(&out, &numa[0].id);
    let mv = recs
        .iter()
        .find(|r| r.spec.action == ActionKind::MoveMemory)
        .expect("move memory");
    assert_eq!(mv.spec.params["node"], "0");
    assert_eq!(mv.cost.bytes, 900 * MIB);
    let pin = recs
        .iter()
        .find(|r| r.spec.action == ActionKind::PinVcpus)
        .expect("or pin to the memory's node");
    assert_eq!(pin.spec.params["cpus"], "2-3");
    assert_eq!(pin.spec.params["vcpu"], "0-1");

    // A QEMU VM gets the pin but no move; a single-node host has no such incident.
    let mut host = HostSpec::new("q", 4).nodes(&[&[0, 1], &[2, 3]]);
    host.node_free = vec![8 * GIB, 8 * GIB];
    let mut vm = VmSpec::qemu("q/far", &[&[0, 1]]);
    vm.numa_resident = vec![(0, 100 * MIB), (1, 900 * MIB)];
    let mut single = VmSpec::builtin("s/vm", &[&[0]]);
    single.numa_resident = vec![(0, 900 * MIB)];
    let mut sim = Sim::new(vec![host, HostSpec::new("s", 4)], vec![vm, single]);
    let out = sim.run(10);
    let numa = of_class(&out, IncidentClass::NumaImbalance);
    assert_eq!(numa.len(), 1);
    let recs = latest_recs(&out, &numa[0].id);
    assert!(
        recs.iter().all(|r| r.spec.action != ActionKind::MoveMemory),
        "{recs:#?}"
    );
    assert!(recs.iter().any(|r| r.spec.action == ActionKind::PinVcpus));
    assert!(
        latest(&out)
            .iter()
            .all(|i| !i.subjects.iter().any(|s| s.host == "s"))
    );
}

fn crowded_host(vmm: VmmKind, rising: bool) -> Sim {
    let all: &[u32] = &[0, 1, 2, 3];
    let vms = (0..6)
        .map(|i| {
            let mut vm = VmSpec::builtin(&format!("h/vm-{i}"), &[all]);
            vm.vmm = vmm;
            vm.vcpus[0].runs_on = vec![i % 4];
            if rising {
                vm.load(0.1, 0.01, 50.0);
            } else {
                vm.load(0.65, 0.3, 200.0);
            }
            vm
        })
        .collect();
    let mut host = HostSpec::new("h", 4);
    host.busy = vec![1.0; 4];
    Sim::new(vec![host, spare()], vms)
}

#[test]
fn many_waiting_vms_with_no_single_culprit_are_host_overcommit() {
    for rising in [false, true] {
        let mut sim = crowded_host(VmmKind::Builtin, rising);
        let mut out = sim.run(20);
        if rising {
            assert!(out.is_empty());
            for i in 0..6 {
                sim.vm(&format!("h/vm-{i}")).load(0.65, 0.3, 200.0);
            }
            out = sim.run(20);
        }
        let latest = latest(&out);
        assert_eq!(latest.len(), 1, "rising={rising}: {latest:#?}");
        assert_eq!(latest[0].class, IncidentClass::HostOvercommit);
        assert_eq!(latest[0].hypotheses[0].culprit.vm, None);
        assert!(latest[0].subjects.len() >= 6);
        let recs = latest_recs(&out, &latest[0].id);
        assert!(
            recs.iter().all(|r| r.spec.action != ActionKind::Migrate),
            "built-in: {recs:#?}"
        );
        assert_eq!(recs.last().map(|r| r.spec.action), Some(ActionKind::Notify));
    }
}

#[test]
fn qemu_vms_migrate_to_a_host_with_room_and_builtin_ones_never_do() {
    let mut sim = crowded_host(VmmKind::Qemu, false);
    let out = sim.run(20);
    let over = of_class(&out, IncidentClass::HostOvercommit);
    assert_eq!(over.len(), 1);
    let recs = latest_recs(&out, &over[0].id);
    let migrate: Vec<_> = recs
        .iter()
        .filter(|r| r.spec.action == ActionKind::Migrate)
        .collect();
    assert!(!migrate.is_empty(), "{recs:#?}");
    for m in &migrate {
        assert_eq!(m.spec.params["dest_host"], "spare");
        assert!(
            m.cost.bytes >= GIB && m.cost.duration_s > 0.0,
            "{:?}",
            m.cost
        );
        assert!(m.cost.summary.contains("pre-copy"), "{}", m.cost.summary);
    }
    // Migrations cost more than a notification is worth, but the notification is last.
    assert_eq!(recs.last().map(|r| r.spec.action), Some(ActionKind::Notify));

    let mut sim = crowded_host(VmmKind::Builtin, false);
    let out = sim.run(20);
    assert!(recs_of_kind(&out, ActionKind::Migrate).is_empty());
}

fn recs_of_kind(records: &[Record], kind: ActionKind) -> Vec<&Recommendation> {
    recs(records)
        .into_iter()
        .filter(|r| r.spec.action == kind)
        .collect()
}

#[test]
fn a_qemu_vm_dirtying_faster_than_the_link_is_not_migrated() {
    for (dirty, migrates) in [(2.0e9, false), (1.0e8, true)] {
        let mut noisy = quiet_noisy(VmmKind::Qemu);
        noisy.dirty = Some(dirty);
        let mut sim = shared_cpu_fleet(noisy);
        sim.run(30);
        storm(&mut sim);
        let out = sim.run(20);
        let nn = of_class(&out, IncidentClass::NoisyNeighbour);
        assert_eq!(nn.len(), 1);
        let recs = latest_recs(&out, &nn[0].id);
        let migrate = recs.iter().find(|r| r.spec.action == ActionKind::Migrate);
        assert_eq!(migrate.is_some(), migrates, "dirty {dirty}: {recs:#?}");
        if let Some(m) = migrate {
            assert_eq!(m.spec.target.vm.as_deref(), Some("h/noisy"));
            // Pins are cheaper and come first.
            assert!(m.rank > 1);
        }
    }
}

#[test]
fn recovery_resolves_once_after_the_quiet_period() {
    let mut sim = shared_cpu_fleet(quiet_noisy(VmmKind::Builtin));
    sim.run(30);
    storm(&mut sim);
    let out = sim.run(20);
    let id = of_class(&out, IncidentClass::NoisyNeighbour)[0].id.clone();
    calm(&mut sim);
    let recovered_at = sim.ts;
    let out = sim.run(120);
    let resolved: Vec<&Incident> = incidents(&out)
        .into_iter()
        .filter(|i| i.status == IncidentStatus::Resolved)
        .collect();
    assert_eq!(resolved.len(), 1, "{resolved:#?}");
    let r = resolved[0];
    assert_eq!(r.id, id);
    let quiet = 60_000;
    let resolved_ts = r.resolved_ts.expect("resolved_ts");
    assert!(
        resolved_ts >= recovered_at + quiet,
        "not before the quiet period"
    );
    assert!(
        resolved_ts <= recovered_at + quiet + 10_000,
        "soon after it"
    );
    assert!(
        incidents(&out).iter().all(|i| i.ts <= resolved_ts),
        "nothing after"
    );
    assert_eq!(sim.correlator.open_incidents(), 0);
}

#[test]
fn nothing_changes_nothing_is_written() {
    let mut sim = shared_cpu_fleet(quiet_noisy(VmmKind::Builtin));
    sim.run(30);
    storm(&mut sim);
    let opened = sim.run(15);
    assert!(!incidents(&opened).is_empty());
    let steady = sim.run(30);
    assert!(steady.is_empty(), "{steady:#?}");
    // Ticking again without new samples writes nothing either.
    let ts = sim.ts;
    assert!(sim.correlator.tick(ts).is_empty());
    assert!(sim.correlator.tick(ts + 100).is_empty());
}

#[test]
fn anomalies_under_the_guards_still_open_and_join_the_incident() {
    let mut sim = shared_cpu_fleet(quiet_noisy(VmmKind::Builtin));
    sim.run(30);
    // Below every guard: 15 % delay, 800 exits/s; only the detectors see it.
    sim.vm("h/noisy").load(0.3, 0.05, 800.0);
    sim.vm("h/victim").load(0.5, 0.15, 100.0);
    assert!(sim.run(10).is_empty(), "guards alone stay quiet");
    sim.anomaly(("h", Some("h/victim")), "vcpu.0.wait_frac", 0.16, 0.02);
    sim.anomaly(("h", Some("h/noisy")), "vcpu.0.run_frac", 0.32, 0.05);
    sim.anomaly(("h", None), series::CPU_BUSY_FRAC, 0.5, 0.2);
    let out = sim.run(2);
    let nn = of_class(&out, IncidentClass::NoisyNeighbour);
    assert_eq!(nn.len(), 1, "{:#?}", latest(&out));
    assert_eq!(culprit_vm(&nn[0]), Some("h/noisy"));
    assert_eq!(nn[0].anomaly_ids.len(), 3, "{:?}", nn[0].anomaly_ids);
    assert_eq!(
        latest(&out).len(),
        1,
        "the host's anomaly joins, it does not open another"
    );
}

#[test]
fn a_runaway_that_starts_hurting_a_neighbour_becomes_that_incident() {
    let mut sim = shared_cpu_fleet(quiet_noisy(VmmKind::Builtin));
    sim.run(30);
    sim.vm("h/noisy").load(0.5, 0.01, 60_000.0);
    let first = sim.run(10);
    let runaway = of_class(&first, IncidentClass::RunawayGuest);
    assert_eq!(runaway.len(), 1, "{:#?}", latest(&first));
    sim.vm("h/victim").load(0.4, 0.45, 100.0);
    let second = sim.run(10);
    let latest = latest(&second);
    assert_eq!(latest.len(), 1, "{latest:#?}");
    assert_eq!(latest[0].id, runaway[0].id, "same incident, new class");
    assert_eq!(latest[0].class, IncidentClass::NoisyNeighbour);
    assert!(
        !latest_recs(&second, &latest[0].id).is_empty(),
        "re-recommended"
    );
}

#[test]
fn a_restarted_correlator_adopts_and_resolves_open_incidents() {
    let mut sim = shared_cpu_fleet(quiet_noisy(VmmKind::Builtin));
    sim.run(30);
    storm(&mut sim);
    let before = sim.run(20);
    let open = latest(&before);
    assert_eq!(open.len(), 1);

    // The new process replays the log: the incident record, then calm samples.
    sim.correlator = Correlator::new(CorrelatorConfig::default());
    for r in &before {
        sim.correlator.observe(r);
    }
    calm(&mut sim);
    let after = sim.run(120);
    let resolved: Vec<&Incident> = incidents(&after)
        .into_iter()
        .filter(|i| i.status == IncidentStatus::Resolved)
        .collect();
    assert_eq!(resolved.len(), 1, "{:#?}", incidents(&after));
    assert_eq!(resolved[0].id, open[0].id);
    // Its own records, seen again, adopt nothing.
    for r in before.iter().chain(&after) {
        sim.correlator.observe(r);
    }
    assert_eq!(sim.correlator.open_incidents(), 0);
    assert!(sim.run(5).is_empty());
}

#[test]
fn hostile_input_does_not_panic() {
    let mut c = Correlator::default();
    let mut s = super::test_utils::vm_sample(&VmSpec::builtin("h/x", &[&[0]]), 1000);
    s.vcpus[0].run_frac = f64::NAN;
    s.vcpus[0].wait_frac = f64::INFINITY;
    s.vcpus[0].affinity = vec![u32::MAX];
    s.mem_bytes = 0;
    s.balloon_target_bytes = Some(u64::MAX);
    s.balloon_actual_bytes = Some(u64::MAX);
    s.dirty_bytes_per_s = Some(f64::NEG_INFINITY);
    s.numa_resident = vec![
        fleetmind_schema::NodeBytes {
            node: 0,
            bytes: u64::MAX,
        },
        fleetmind_schema::NodeBytes {
            node: 1,
            bytes: u64::MAX,
        },
    ];
    let mut h = super::test_utils::host_sample(&HostSpec::new("h", 0), 1000);
    h.cpu.busy_frac = f64::NAN;
    h.numa.clear();
    for i in 0..10 {
        let mut s = s.clone();
        s.ts += i * 1000;
        let mut h = h.clone();
        h.ts += i * 1000;
        c.observe(&Record::HostSample(h));
        c.observe(&Record::VmSample(s));
        for r in c.tick(1000 + i * 1000) {
            serde_json::to_string(&r).expect("serialisable");
        }
    }
}

/// The built-in VMM's layout: VMs name their VMM host (`vmm-a`), samples name the machine.
fn builtin_layout(mut vms: Vec<VmSpec>, cpus: u32) -> Sim {
    for vm in &mut vms {
        vm.host = "vmm-a".to_owned();
        vm.vm = vm.vm.replacen("h/", "vmm-a/", 1);
    }
    let mut machine = HostSpec::new("box", cpus);
    machine.busy = vec![0.2; cpus as usize];
    Sim::new(vec![machine], vms)
}

#[test]
fn builtin_vmm_hosts_borrow_the_machine_they_run_on() {
    // Two CPUs, as small as a test box gets; both VMs pinned to CPU 1 and busy from the start,
    // so the storm has no baseline to rise from.
    let mut victim = VmSpec::builtin("h/victim", &[&[1]]);
    victim.load(0.5, 0.45, 150.0);
    let mut noisy = VmSpec::builtin("h/noisy", &[&[1]]);
    noisy.load(0.3, 0.4, 30_000.0);
    let mut sim = builtin_layout(vec![victim, noisy], 2);
    let out = sim.run(20);
    let nn = of_class(&out, IncidentClass::NoisyNeighbour);
    assert_eq!(nn.len(), 1, "{:#?}", latest(&out));
    assert_eq!(culprit_vm(&nn[0]), Some("vmm-a/noisy"));
    let recs = latest_recs(&out, &nn[0].id);
    let first = recs.first().expect("recs");
    assert_eq!(first.spec.action, ActionKind::PinVcpus, "{recs:#?}");
    assert_eq!(first.spec.target.host, "vmm-a");
    assert_eq!(first.spec.params["cpus"], "0", "the machine's other CPU");

    // A VM host whose CPUs are not the machine's is not guessed at: no pins to CPUs it may
    // not have.
    let mut victim = VmSpec::builtin("h/victim", &[&[5]]);
    victim.load(0.5, 0.45, 150.0);
    let mut noisy = VmSpec::builtin("h/noisy", &[&[5]]);
    noisy.load(0.3, 0.4, 30_000.0);
    let mut sim = builtin_layout(vec![victim, noisy], 2);
    let out = sim.run(20);
    let nn = of_class(&out, IncidentClass::NoisyNeighbour);
    assert_eq!(nn.len(), 1, "{:#?}", latest(&out));
    let recs = latest_recs(&out, &nn[0].id);
    assert!(
        recs.iter().all(|r| r.spec.action == ActionKind::Notify),
        "{recs:#?}"
    );
}

#[test]
fn a_builtin_guest_squeezed_by_its_balloon_gets_it_deflated() {
    let mut vm = VmSpec::builtin("h/hog", &[&[0]]);
    vm.mem_bytes = 256 * MIB;
    vm.rss_bytes = 20 * MIB;
    vm.balloon = Some((64 * MIB, 64 * MIB));
    vm.guest_free = Some(150 * MIB);
    let mut sim = builtin_layout(vec![vm], 2);
    sim.run(10);
    // Its working set grows into everything the balloon leaves.
    let vm = sim.vm("vmm-a/hog");
    vm.rss_bytes = 200 * MIB;
    vm.guest_free = Some(4 * MIB);
    let out = sim.run(10);
    let mem = of_class(&out, IncidentClass::MemoryPressure);
    assert_eq!(mem.len(), 1, "{:#?}", latest(&out));
    assert_eq!(culprit_vm(&mem[0]), Some("vmm-a/hog"));
    let recs = latest_recs(&out, &mem[0].id);
    assert_eq!(recs[0].spec.action, ActionKind::Balloon, "{recs:#?}");
    assert_eq!(recs[0].spec.params["target_mib"], "29");
    assert_eq!(
        recs[0].spec.params["delta_mib"], "-35",
        "up to 15 % free, rounded up"
    );

    // Without anything in the balloon, only an operator can help.
    let mut vm = VmSpec::builtin("h/hog", &[&[0]]);
    vm.mem_bytes = 256 * MIB;
    vm.rss_bytes = 20 * MIB;
    vm.guest_free = Some(200 * MIB);
    let mut sim = builtin_layout(vec![vm], 2);
    sim.run(10);
    let vm = sim.vm("vmm-a/hog");
    vm.rss_bytes = 250 * MIB;
    vm.guest_free = Some(4 * MIB);
    let out = sim.run(10);
    let mem = of_class(&out, IncidentClass::MemoryPressure);
    assert_eq!(
        mem.len(),
        1,
        "grown into all its memory: {:#?}",
        latest(&out)
    );
    let recs = latest_recs(&out, &mem[0].id);
    assert!(
        recs.iter().all(|r| r.spec.action == ActionKind::Notify),
        "{recs:#?}"
    );
}

#[test]
fn a_guest_that_takes_its_balloon_back_is_squeezed_by_the_target() {
    // 128 MiB guest, 8 MiB working set, balloon at 96 MiB; then the working set grows to
    // 110 MiB and the guest takes the balloon back to what is left above it (17 MiB), with
    // nothing free. Its resident memory does not change here: the balloon alone must tell.
    let mut vm = VmSpec::builtin("h/hog", &[&[0, 1]]);
    vm.mem_bytes = 128 * MIB;
    vm.rss_bytes = 40 * MIB;
    vm.balloon = Some((96 * MIB, 96 * MIB));
    vm.guest_free = Some(23 * MIB);
    let mut sim = builtin_layout(vec![vm], 2);
    assert!(sim.run(45).is_empty());
    let vm = sim.vm("vmm-a/hog");
    vm.balloon = Some((96 * MIB, 17 * MIB));
    vm.guest_free = Some(0);
    let out = sim.run(10);
    let mem = of_class(&out, IncidentClass::MemoryPressure);
    assert_eq!(mem.len(), 1, "{:#?}", latest(&out));
    let recs = latest_recs(&out, &mem[0].id);
    let balloon = recs
        .iter()
        .find(|r| r.spec.action == ActionKind::Balloon)
        .expect("a balloon recommendation");
    let target: u32 = balloon.spec.params["target_mib"].parse().expect("number");
    assert!(
        target < 17,
        "below what it holds: {:?}",
        balloon.spec.params
    );
    let first = incidents(&out)[0];
    assert!(
        first.hypotheses[0]
            .evidence
            .iter()
            .any(|e| e.series == series::BALLOON_ACTUAL_BYTES && e.expected > e.value),
        "the target asks for more than the balloon holds: {first:#?}"
    );
}

#[test]
fn the_scenario_noisy_neighbour_on_a_two_cpu_box() {
    // A victim computing 60 % on CPU 0, an idle I/O VM pinned there too; then the storm.
    let mut victim = VmSpec::builtin("h/victim", &[&[0]]);
    victim.load(0.6, 0.01, 100.0);
    let mut storm = VmSpec::builtin("h/storm", &[&[0]]);
    storm.load(0.01, 0.0, 100.0);
    let mut sim = builtin_layout(vec![victim, storm], 2);
    sim.host("box").busy = vec![0.6, 0.1];
    assert!(sim.run(45).is_empty());
    sim.vm("vmm-a/storm").load(0.5, 0.4, 150_000.0);
    sim.vm("vmm-a/victim").load(0.5, 0.45, 100.0);
    sim.host("box").busy = vec![1.0, 0.1];
    let mut out = sim.run(3);
    // The machine's own load shows in its series: evidence, not another incident.
    for series in [
        series::CPU_BUSY_FRAC,
        series::LOAD1,
        series::PSI_CPU_SOME_FRAC,
    ] {
        sim.anomaly(("box", None), series, 1.0, 0.6);
    }
    out.extend(sim.run(10));
    let all = latest(&out);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].class, IncidentClass::NoisyNeighbour);
    assert_eq!(culprit_vm(&all[0]), Some("vmm-a/storm"));
    assert_eq!(all[0].anomaly_ids.len(), 3, "{:?}", all[0].anomaly_ids);
    let recs = latest_recs(&out, &all[0].id);
    assert_eq!(recs[0].spec.action, ActionKind::PinVcpus);
    assert_eq!(recs[0].spec.params["cpus"], "1");
    assert_eq!(recs[0].spec.target.vm.as_deref(), Some("vmm-a/victim"));
}

#[test]
fn a_victim_still_waiting_after_the_storm_keeps_its_noisy_neighbour_incident() {
    // Seen on a busy two-CPU box: the victim's delay sits at the guard before and after the
    // storm. The incident stays what it was; it does not turn into an unknown one.
    let mut sim = shared_cpu_fleet(quiet_noisy(VmmKind::Builtin));
    sim.run(30);
    storm(&mut sim);
    let opened = sim.run(20);
    let id = of_class(&opened, IncidentClass::NoisyNeighbour)[0]
        .id
        .clone();
    let recs_before = latest_recs(&opened, &id).len();
    sim.vm("h/noisy").load(0.05, 0.01, 80.0);
    sim.vm("h/victim").load(0.55, 0.25, 100.0);
    let after = sim.run(90);
    let versions: Vec<&Incident> = incidents(&after)
        .into_iter()
        .filter(|i| i.id == id)
        .collect();
    assert!(
        versions
            .iter()
            .all(|i| i.class == IncidentClass::NoisyNeighbour && i.status == IncidentStatus::Open),
        "{versions:#?}"
    );
    assert_eq!(
        latest(&after).len(),
        versions.len().min(1),
        "{:#?}",
        latest(&after)
    );
    assert!(recs(&after).is_empty(), "the recommendations stand");
    assert!(recs_before > 0);
    if let Some(last) = versions.last() {
        let series: Vec<&str> = last.hypotheses[0]
            .evidence
            .iter()
            .map(|e| e.series.as_str())
            .collect();
        assert!(
            series.contains(&series::EXITS_PER_S),
            "the storm stays in the evidence: {series:?}"
        );
    }
}

#[test]
fn a_small_delay_with_no_one_to_blame_is_not_an_incident() {
    let mut vm = VmSpec::builtin("h/alone", &[&[0]]);
    vm.load(0.5, 0.11, 100.0);
    let mut sim = Sim::new(vec![HostSpec::new("h", 4)], vec![vm]);
    sim.run(20);
    for _ in 0..5 {
        sim.anomaly(("h", Some("h/alone")), "vcpu.0.wait_frac", 0.12, 0.05);
        assert!(sim.step().is_empty());
    }
}

#[test]
fn a_machines_own_anomalies_join_the_vm_host_that_explains_them() {
    let mut quiet = VmSpec::builtin("vmm-a/quiet", &[&[1]]);
    quiet.host = "vmm-a".into();
    let mut victim = VmSpec::builtin("vmm-b/victim", &[&[0]]);
    victim.host = "vmm-b".into();
    victim.load(0.6, 0.01, 100.0);
    let mut storm = VmSpec::builtin("vmm-b/storm", &[&[0]]);
    storm.host = "vmm-b".into();
    storm.load(0.01, 0.0, 100.0);
    let mut sim = Sim::new(vec![HostSpec::new("box", 2)], vec![quiet, victim, storm]);
    sim.run(30);
    sim.vm("vmm-b/storm").load(0.5, 0.4, 100_000.0);
    sim.vm("vmm-b/victim").load(0.4, 0.45, 100.0);
    let mut out = sim.run(5);
    for _ in 0..3 {
        // vmm-a has a signal of its own, and is looked at first.
        sim.anomaly(
            ("vmm-a", Some("vmm-a/quiet")),
            series::DIRTY_BYTES_PER_S,
            1e8,
            1e6,
        );
        for series in [
            series::CPU_BUSY_FRAC,
            series::LOAD1,
            series::PSI_CPU_SOME_FRAC,
        ] {
            sim.anomaly(("box", None), series, 1.0, 0.5);
        }
        out.extend(sim.run(2));
    }
    let all = latest(&out);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].class, IncidentClass::NoisyNeighbour);
    let machine: Vec<&str> = all[0].hypotheses[0]
        .evidence
        .iter()
        .filter(|e| e.subject.host == "box")
        .map(|e| e.series.as_str())
        .collect();
    assert_eq!(machine.len(), 3, "{:#?}", all[0]);
}

#[test]
fn vms_crowded_onto_one_pinned_cpu_overcommit_it_and_one_is_pinned_away() {
    // Both busy from the start (no one rose): CPU 0 is asked for 1.6 CPUs.
    let mut a = VmSpec::builtin("h/a", &[&[0]]);
    a.load(0.5, 0.35, 100.0);
    let mut b = VmSpec::builtin("h/b", &[&[0]]);
    b.load(0.45, 0.3, 100.0);
    let mut host = HostSpec::new("h", 4);
    host.busy = vec![1.0, 0.3, 0.1, 0.2];
    let mut sim = Sim::new(vec![host], vec![a, b]);
    let out = sim.run(15);
    let all = latest(&out);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].class, IncidentClass::HostOvercommit);
    assert!(all[0].title.starts_with("CPU 0 of h"), "{}", all[0].title);
    let recs = latest_recs(&out, &all[0].id);
    assert_eq!(recs[0].spec.action, ActionKind::PinVcpus, "{recs:#?}");
    assert_eq!(
        recs[0].spec.target.vm.as_deref(),
        Some("h/a"),
        "the one that waits most"
    );
    assert_eq!(
        recs[0].spec.params["cpus"], "2",
        "the least busy CPU off the crowded one"
    );
    assert_eq!(recs.last().map(|r| r.spec.action), Some(ActionKind::Notify));
}

#[test]
fn vms_waiting_beyond_what_they_ask_for_are_not_overcommit() {
    // Each alone on its CPU and asking for little, yet waiting: something else runs there.
    let mut a = VmSpec::builtin("h/a", &[&[0]]);
    a.load(0.2, 0.3, 100.0);
    let mut b = VmSpec::builtin("h/b", &[&[1]]);
    b.load(0.2, 0.3, 100.0);
    let mut sim = Sim::new(vec![HostSpec::new("h", 4)], vec![a, b]);
    let out = sim.run(15);
    let all = latest(&out);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].class, IncidentClass::Unknown);
    assert_eq!(all[0].hypotheses[0].culprit.vm, None, "the host");
    assert!(
        all[0].title.contains("own demand does not explain"),
        "{}",
        all[0].title
    );
}

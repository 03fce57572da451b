//! Fleet problems played on the built-in VMM, on the real `/dev/kvm`, seen end to end: the VM
//! collector samples the VMs, the detectors and the correlator find the problem, and the API
//! serves the incident with its recommendations.
//!
//! * Noisy neighbour: an I/O-storm VM pinned to the CPU its victim is pinned to. The storm's
//!   exits climb, the victim's run-queue delay climbs; the incident names the storm as the
//!   culprit and recommends pinning a vCPU away from the shared CPU.
//! * Memory hog: a VM with its balloon inflated whose working set grows into it. The guest
//!   takes the balloon back and has no free memory left; the incident is memory pressure and the
//!   first recommendation a balloon change.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Daemon, VmmHost, cli, get_json, wait_for};
use fleetmind_vmm_probe::test_utils::kvm_or_skip;
use serde_json::Value;

/// Long enough for the warm-up, the problem, and a loaded CI machine.
const WAIT: Duration = Duration::from_secs(180);

/// A daemon sampling hosts and VMs every second, without the demo fleet.
fn start_daemon(dir: &Path) -> Daemon {
    let config = dir.join("fleetmind.toml");
    std::fs::write(
        &config,
        "[collector]\ninterval = \"1s\"\nvm_interval = \"1s\"\n",
    )
    .expect("write config");
    Daemon::start(dir, &["--config", config.to_str().expect("utf-8 path")])
}

fn vm(dir: &Path, args: &[&str]) -> String {
    let data_dir = dir.to_str().expect("utf-8 temp path");
    let mut all = vec!["vm", "--data-dir", data_dir];
    all.extend_from_slice(args);
    let (code, out, err) = cli(&all);
    assert_eq!(code, 0, "fleetmind {all:?}: {err}");
    out
}

/// Waits until the daemon has had `count` samples of VM `vm_id`.
async fn samples_of(client: &reqwest::Client, daemon: &Daemon, vm_id: &str, count: u64) {
    let query = format!("SELECT count(*) FROM vm_samples WHERE vm = '{vm_id}'");
    let url = reqwest::Url::parse_with_params(&daemon.url("/api/v1/query"), &[("sql", &query)])
        .expect("url");
    wait_for(&format!("{count} samples of {vm_id}"), WAIT, || async {
        let (status, body) = get_json(client, url.as_str()).await;
        let n = body["rows"][0][0].as_u64().filter(|_| status == 200)?;
        (n >= count).then_some(())
    })
    .await;
}

/// Waits for an open incident of `class` involving `vm_id`; returns it.
async fn incident(client: &reqwest::Client, daemon: &Daemon, class: &str, vm_id: &str) -> Value {
    let url = daemon.url(&format!("/api/v1/incidents?status=open&class={class}"));
    wait_for(
        &format!("a {class} incident with {vm_id}"),
        WAIT,
        || async {
            let (status, body) = get_json(client, &url).await;
            assert_eq!(status, 200, "{body}");
            body["incidents"].as_array()?.iter().find_map(|i| {
                let involved = i["subjects"]
                    .as_array()?
                    .iter()
                    .any(|s| s["vm"].as_str() == Some(vm_id));
                involved.then(|| i.clone())
            })
        },
    )
    .await
}

/// The recommendations of `incident`, in rank order.
async fn recommendations(
    client: &reqwest::Client,
    daemon: &Daemon,
    incident: &Value,
) -> Vec<Value> {
    let id = incident["id"].as_str().expect("incident id");
    let url = daemon.url(&format!("/api/v1/recommendations?incident={id}"));
    let recs = wait_for(&format!("recommendations for {id}"), WAIT, || async {
        let (status, body) = get_json(client, &url).await;
        assert_eq!(status, 200, "{body}");
        let recs = body["recommendations"].as_array()?.clone();
        (!recs.is_empty()).then_some(recs)
    })
    .await;
    let mut recs = recs;
    recs.sort_by_key(|r| r["rank"].as_u64());
    recs
}

/// Prints what was found, for the CI log.
fn report(incident: &Value, recs: &[Value]) {
    eprintln!(
        "incident: {} (class {}, severity {}); culprit {}",
        incident["title"],
        incident["class"],
        incident["severity"],
        incident["hypotheses"][0]["culprit"]
    );
    for evidence in incident["hypotheses"][0]["evidence"]
        .as_array()
        .into_iter()
        .flatten()
    {
        eprintln!("  evidence: {evidence}");
    }
    for r in recs {
        eprintln!(
            "  #{} {} {} -- {}; effect: {}; cost: {}",
            r["rank"],
            r["spec"]["action"],
            r["spec"]["params"],
            r["rationale"],
            r["expected_effect"],
            r["cost"]["summary"]
        );
    }
}

#[tokio::test]
async fn a_noisy_neighbour_is_found_and_a_pin_recommended() {
    if !kvm_or_skip("a_noisy_neighbour_is_found_and_a_pin_recommended") {
        return;
    }
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    if cpus < 2 {
        eprintln!(
            "SKIP a_noisy_neighbour_is_found_and_a_pin_recommended: one CPU, nowhere to pin to"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = start_daemon(dir.path());
    let host = VmmHost::start("scn-noisy", dir.path().to_str().expect("utf-8 path"));
    let client = reqwest::Client::new();

    // The victim computes for 60% of each tick; the storm idles at level 0 for now. Both live
    // on CPU 0 only.
    vm(
        dir.path(),
        &[
            "create",
            r#"{"name":"victim","vcpus":1,"mem_mib":32,"workload":{"kind":"cpu"},"level":60}"#,
        ],
    );
    vm(
        dir.path(),
        &[
            "create",
            r#"{"name":"storm","vcpus":1,"mem_mib":32,"workload":{"kind":"io","rate_per_s":400000},"level":0}"#,
        ],
    );
    vm(dir.path(), &["pin", "victim", "0", "0"]);
    vm(dir.path(), &["pin", "storm", "0", "0"]);
    // A baseline first: the detectors learn the quiet CPU.
    samples_of(&client, &daemon, "scn-noisy/victim", 45).await;

    vm(dir.path(), &["level", "storm", "100"]);
    let found = incident(&client, &daemon, "noisy_neighbour", "scn-noisy/victim").await;
    let culprit = &found["hypotheses"][0]["culprit"];
    assert_eq!(
        culprit["vm"], "scn-noisy/storm",
        "the storm is the first suspect: {found:#}"
    );
    let recs = recommendations(&client, &daemon, &found).await;
    report(&found, &recs);
    let first = &recs[0];
    let action = first["spec"]["action"].as_str().unwrap_or_default();
    assert!(
        action == "pin_vcpus" || action == "migrate",
        "a pin or a migration first: {recs:#?}"
    );
    if action == "pin_vcpus" {
        let target_cpus = first["spec"]["params"]["cpus"].as_str().unwrap_or_default();
        assert!(
            !target_cpus
                .split(',')
                .any(|c| c == "0" || c.starts_with("0-")),
            "away from the shared CPU 0: {first:#}"
        );
        assert!(
            first["cost"]["summary"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
                && first["expected_effect"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
            "{first:#}"
        );
    }
    drop(host);
}

#[tokio::test]
async fn a_memory_hog_is_memory_pressure_with_a_balloon_recommendation() {
    if !kvm_or_skip("a_memory_hog_is_memory_pressure_with_a_balloon_recommendation") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = start_daemon(dir.path());
    let host = VmmHost::start("scn-mem", dir.path().to_str().expect("utf-8 path"));
    let client = reqwest::Client::new();

    // A 128 MiB guest with a small working set gives 96 MiB to its balloon.
    vm(
        dir.path(),
        &[
            "create",
            r#"{"name":"hog","vcpus":1,"mem_mib":128,"workload":{"kind":"memory","working_set_mib":8,"pages_per_s":2000},"level":100}"#,
        ],
    );
    vm(dir.path(), &["balloon", "hog", "96"]);
    wait_for("the balloon to reach 96 MiB", WAIT, || async {
        let out = vm(dir.path(), &["balloon", "hog"]);
        let b: Value = serde_json::from_str(&out).ok()?;
        (b["actual_bytes"].as_u64()? >= 96 << 20).then_some(())
    })
    .await;
    samples_of(&client, &daemon, "scn-mem/hog", 45).await;

    // The working set grows into the balloon: the guest takes the memory back.
    vm(
        dir.path(),
        &[
            "workload",
            "hog",
            r#"{"kind":"memory","working_set_mib":110,"pages_per_s":20000}"#,
        ],
    );
    let found = incident(&client, &daemon, "memory_pressure", "scn-mem/hog").await;
    let recs = recommendations(&client, &daemon, &found).await;
    report(&found, &recs);
    let balloon = recs
        .iter()
        .find(|r| r["spec"]["action"] == "balloon")
        .unwrap_or_else(|| panic!("a balloon recommendation: {recs:#?}"));
    assert!(
        balloon["spec"]["params"]["target_mib"]
            .as_str()
            .and_then(|t| t.parse::<u32>().ok())
            .is_some_and(|t| t < 96),
        "the hog's balloon deflates: {balloon:#}"
    );
    drop(host);
}

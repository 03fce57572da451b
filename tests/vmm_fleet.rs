//! The demo fleet of `fleetmind run` and the `fleetmind vm` CLI, on the real `/dev/kvm`: the
//! hosts start, the CLI lists and controls their VMs with errors that name the field, and the
//! hosts go away with the daemon whether it is stopped or killed.

mod common;

use std::time::Duration;

use common::{Daemon, cli, get_json, process_gone, wait_for};
use fleetmind_vmm_probe::test_utils::kvm_or_skip;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

/// A config with a small, fast demo fleet: two hosts, two VMs each, a 24-second day.
fn demo_config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("fleetmind.toml");
    std::fs::write(
        &path,
        "[vmm]\ndemo_hosts = 2\ndemo_vms_per_host = 2\ndemo_day_length = \"24s\"\n",
    )
    .expect("write config");
    path
}

/// Waits until health shows every demo host running; returns their pids.
async fn hosts_running(client: &reqwest::Client, daemon: &Daemon) -> Vec<u64> {
    let url = daemon.url("/api/v1/health");
    wait_for("the demo hosts to run", WAIT, || async {
        let (_, health) = get_json(client, &url).await;
        let hosts = health["vmm"]["hosts"].as_array()?.clone();
        let running = hosts.len() == 2 && hosts.iter().all(|h| h["state"] == "running");
        running.then(|| hosts.iter().filter_map(|h| h["pid"].as_u64()).collect())
    })
    .await
}

fn vm_cli(data_dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let data_dir = data_dir.to_str().expect("utf-8 temp path");
    let mut all = vec!["vm", "--data-dir", data_dir];
    all.extend_from_slice(args);
    cli(&all)
}

#[tokio::test]
async fn run_starts_the_demo_fleet_and_the_vm_cli_controls_it() {
    if !kvm_or_skip("run_starts_the_demo_fleet_and_the_vm_cli_controls_it") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = demo_config(dir.path());
    let mut daemon = Daemon::start_with_demo(dir.path(), &["--config", config.to_str().unwrap()]);
    let client = reqwest::Client::new();
    let pids = hosts_running(&client, &daemon).await;

    // Both hosts answer, with their VMs running (the hosts create them before listening).
    let listed = wait_for("four running VMs in the list", WAIT, || async {
        let (code, out, _) = vm_cli(dir.path(), &["list", "--json"]);
        let list: Value = serde_json::from_str(&out).ok().filter(|_| code == 0)?;
        let vms: Vec<(String, String)> = list["hosts"]
            .as_array()?
            .iter()
            .flat_map(|h| h["vms"].as_array().cloned().unwrap_or_default())
            .map(|vm| {
                (
                    vm["name"].as_str().unwrap_or("").to_owned(),
                    vm["state"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        (vms.len() == 4).then_some(vms)
    })
    .await;
    let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["db-1-2", "web-1-1", "db-2-2", "web-2-1"]);
    assert!(listed.iter().all(|(_, s)| s == "running"), "{listed:?}");
    let (code, table, _) = vm_cli(dir.path(), &["list"]);
    assert_eq!(code, 0);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("demo-host-2") && l.contains("web-2-1")),
        "{table}"
    );
    let (code, hosts, _) = vm_cli(dir.path(), &["hosts"]);
    assert_eq!(code, 0);
    assert!(
        hosts.contains("demo-host-1") && hosts.contains("kvm ("),
        "{hosts}"
    );

    // A VM command finds the host that has the VM; the level sticks (the demo driver hands
    // a VM over once someone else sets its level).
    let (code, out, err) = vm_cli(dir.path(), &["level", "web-2-1", "77"]);
    assert_eq!(code, 0, "{err}");
    let vm: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(vm["spec"]["level"], 77);
    let (code, out, _) = vm_cli(dir.path(), &["stats", "db-1-2"]);
    assert_eq!(code, 0);
    let stats: Value = serde_json::from_str(&out).expect("JSON");
    assert!(
        stats["kvm"]["vcpus"][0]["exits"].as_u64().is_some(),
        "{stats}"
    );

    // Errors name the field, the host and the status, and exit non-zero.
    let bad = r#"{"name":"x","vcpus":0,"mem_mib":16,"workload":{"kind":"cpu"}}"#;
    let (code, _, err) = vm_cli(dir.path(), &["--host", "demo-host-1", "create", bad]);
    assert_eq!(code, 1);
    assert!(
        err.contains("demo-host-1: invalid VM spec: vcpus must be between 1 and"),
        "{err}"
    );
    assert!(err.contains("HTTP 400"), "{err}");
    let (code, _, err) = vm_cli(dir.path(), &["create", bad]);
    assert_eq!(code, 1);
    assert!(err.contains("choose one with --host"), "{err}");
    let (code, _, err) = vm_cli(dir.path(), &["show", "nosuch"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no VM named \"nosuch\" on any VMM host"),
        "{err}"
    );
    let (code, _, err) = vm_cli(dir.path(), &["pin", "web-1-1", "0", "x-y"]);
    assert_eq!(code, 1);
    assert!(err.contains("CPUS must be a list"), "{err}");

    // Create, balloon, delete through the CLI.
    let spec = r#"{"name":"cli-1","vcpus":1,"mem_mib":32,"workload":{"kind":"idle"}}"#;
    let (code, _, err) = vm_cli(dir.path(), &["--host", "demo-host-2", "create", spec]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = vm_cli(dir.path(), &["balloon", "cli-1", "8"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"target_mib\": 8"), "{out}");
    let (code, _, _) = vm_cli(dir.path(), &["delete", "cli-1"]);
    assert_eq!(code, 0);

    // The VM collector reads every demo VM into vm_samples, with KVM's exit counters moving
    // and the vCPU threads named.
    let rows = wait_for("VM samples of all four demo VMs", WAIT, || async {
        let body = common::sql(
            &client,
            &daemon,
            "select host, name, max(exits[1]['total']) as exits, max(vcpus[1]['tid']) as tid, \
             max(mem_bytes) as mem from vm_samples group by host, name order by host, name",
        )
        .await;
        let rows = body["rows"].as_array()?.clone();
        let moving = rows.len() == 4 && rows.iter().all(|r| r[2].as_u64() > Some(0));
        moving.then_some(rows)
    })
    .await;
    assert_eq!(rows[0][0], "demo-host-1");
    assert_eq!(rows[0][1], "db-1-2");
    assert!(rows.iter().all(|r| r[3].as_u64() > Some(0)), "{rows:?}");
    assert_eq!(rows[0][4], 96 << 20);

    // SIGTERM: the hosts stop their VMs and remove their sockets before the daemon exits.
    let status = daemon.terminate();
    assert!(status.success(), "{status}");
    for pid in pids {
        assert!(process_gone(pid), "VMM host {pid} outlived the daemon");
    }
    let sockets: Vec<_> = std::fs::read_dir(dir.path().join("vmm")).unwrap().collect();
    assert!(sockets.is_empty(), "{sockets:?}");
}

#[tokio::test]
async fn killing_the_daemon_takes_its_vmm_hosts_with_it() {
    if !kvm_or_skip("killing_the_daemon_takes_its_vmm_hosts_with_it") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = demo_config(dir.path());
    let mut daemon = Daemon::start_with_demo(
        dir.path(),
        &["--config", config.to_str().unwrap(), "--no-collect"],
    );
    let client = reqwest::Client::new();
    let pids = hosts_running(&client, &daemon).await;
    daemon.kill9();
    for pid in pids {
        wait_for("the orphaned VMM host to exit", WAIT, || async {
            process_gone(pid).then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn no_demo_starts_no_hosts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), &["--no-collect"]);
    let client = reqwest::Client::new();
    let (_, health) = get_json(&client, &daemon.url("/api/v1/health")).await;
    assert_eq!(health["vmm"]["demo"], false, "{health}");
    let (code, _, err) = vm_cli(dir.path(), &["list"]);
    assert_eq!(code, 1);
    assert!(err.contains("no VMM hosts in"), "{err}");
}

#[test]
fn a_vmm_host_guards_its_socket_and_exits_when_stdin_closes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().to_str().expect("utf-8 temp path");
    let first = common::VmmHost::start("h1", data_dir);
    let announced = first.announced.clone();
    let socket = dir.path().join("vmm/h1.sock");
    assert_eq!(
        announced,
        format!(
            "fleetmind vmm: control API on unix:{} (host h1)",
            socket.display()
        )
    );

    // A second host of the same name does not steal the socket.
    let (code, _, err) = cli(&["vmm", "--name", "h1", "--data-dir", data_dir]);
    assert_eq!(code, 1);
    assert!(err.contains("another VMM host is serving"), "{err}");
    // Nor does a host pointed at a file that is not a socket replace it.
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, "keep me").expect("write");
    let (code, _, err) = cli(&["vmm", "--socket", file.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("is not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    // Bad host names are named.
    let (code, _, err) = cli(&["vmm", "--name", "../x", "--data-dir", data_dir]);
    assert_eq!(code, 1);
    assert!(err.contains("--name must be"), "{err}");

    // The host answers `fleetmind vm hosts`, then stops when its stdin closes.
    let (code, out, _) = vm_cli(dir.path(), &["hosts"]);
    assert_eq!(code, 0);
    assert!(out.contains("h1"), "{out}");
    let status = first.stop();
    assert!(status.success(), "{status}");
    assert!(!socket.exists(), "the socket outlived its host");
}

#[tokio::test]
async fn vm_collector_reports_an_unreachable_vmm_host_and_its_recovery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().to_str().expect("utf-8 temp path");
    // A socket file nobody serves: connections are refused.
    std::fs::create_dir_all(dir.path().join("vmm")).unwrap();
    drop(std::os::unix::net::UnixListener::bind(dir.path().join("vmm/h9.sock")).unwrap());
    let config = dir.path().join("fleetmind.toml");
    std::fs::write(&config, "[collector]\nvm_interval = \"200ms\"\n").unwrap();
    let daemon = Daemon::start(dir.path(), &["--config", config.to_str().unwrap()]);
    let client = reqwest::Client::new();
    let count = |healthy: bool| {
        let query = format!(
            "select count(*) from collector_health where source like '%h9.sock' and healthy = {healthy}"
        );
        let client = client.clone();
        let daemon = &daemon;
        async move { common::count(&client, daemon, &query).await }
    };
    wait_for("an unhealthy record for the dead socket", WAIT, || async {
        (count(false).await >= 1).then_some(())
    })
    .await;
    let body = common::sql(
        &client,
        &daemon,
        "select message, consecutive_failures, retry_in_ms from collector_health where not healthy limit 1",
    )
    .await;
    let message = body["rows"][0][0].as_str().unwrap_or_default().to_owned();
    assert!(message.contains("h9.sock"), "{body}");
    assert_eq!(count(true).await, 0);

    // The host comes up on that socket: the collector reads it and says so.
    let host = common::VmmHost::start("h9", data_dir);
    wait_for("a healthy record once the host serves", WAIT, || async {
        (count(true).await >= 1).then_some(())
    })
    .await;
    assert!(host.stop().success());
}

//! The built-in VMM's hosts, read through their control sockets (`GET /vmm/v1/stats`: every
//! VM of the host in one answer).
//!
//! Each VMM host is its own process with its own socket, and each is one [`BuiltinSource`]:
//! [`discover`] lists the sockets of a directory, so hosts that start later are picked up and
//! hosts that stop are dropped. The host name is the one the VMM host reports, so its VMs are
//! attributed to the "host" it plays.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fleetmind_schema::{NodeBytes, VmmKind};
use futures::future::BoxFuture;
use serde_json::Value;

use super::{SourceError, VcpuReading, VmReading, VmSource};

/// Whether a KVM statistic named `name` counts exits or work done because of them; these go
/// into [`VmReading::exits`] (summed over vCPUs). The names differ by flavour (PVM counts port
/// I/O under `insn_emulation`), so all of them are kept and none is assumed.
#[must_use]
pub fn is_exit_counter(name: &str) -> bool {
    name == "exits"
        || name.ends_with("_exits")
        || name.starts_with("insn_emulation")
        || matches!(name, "halt_wakeup" | "hypercalls" | "pf_taken" | "pf_fixed")
}

/// One VMM host's control socket.
#[derive(Debug)]
pub struct BuiltinSource {
    socket: PathBuf,
    client: reqwest::Client,
}

impl BuiltinSource {
    /// A source for the VMM host serving `socket`; every request times out after `timeout`.
    ///
    /// # Errors
    ///
    /// If the HTTP client cannot be built.
    pub fn new(socket: PathBuf, timeout: Duration) -> Result<Self, SourceError> {
        let client = reqwest::Client::builder()
            .unix_socket(socket.clone())
            .timeout(timeout)
            .build()
            .map_err(|e| {
                SourceError::new(format!("{}: cannot build a client: {e}", socket.display()))
            })?;
        Ok(Self { socket, client })
    }

    async fn fetch(&self) -> Result<Value, SourceError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            SourceError::new(format!("{}: {what}: {e}", self.socket.display()))
        };
        let response = self
            .client
            .get("http://localhost/vmm/v1/stats")
            .send()
            .await
            .map_err(|e| fail("request failed", &error_chain(&e)))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .map_err(|e| fail("bad answer", &error_chain(&e)))?;
        if !status.is_success() {
            let message = body["error"]["message"].as_str().unwrap_or("no message");
            return Err(fail(&format!("HTTP {status}"), &message));
        }
        Ok(body)
    }
}

/// `e` with its sources (reqwest hides the interesting part, e.g. "No such file", in them).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl VmSource for BuiltinSource {
    fn name(&self) -> String {
        format!("builtin:{}", self.socket.display())
    }

    fn read(&mut self) -> BoxFuture<'_, Result<Vec<VmReading>, SourceError>> {
        Box::pin(async move {
            let body = self.fetch().await?;
            let ts_ms = fleetmind_schema::now_ms();
            let at = Instant::now();
            parse_stats(&body, ts_ms, at)
                .map_err(|e| SourceError::new(format!("{}: {e}", self.socket.display())))
        })
    }
}

/// The VMs of one `GET /vmm/v1/stats` answer.
///
/// # Errors
///
/// A message naming the missing or malformed field.
pub fn parse_stats(
    body: &Value,
    ts_ms: fleetmind_schema::TimestampMs,
    at: Instant,
) -> Result<Vec<VmReading>, String> {
    let host = body["host"].as_str().ok_or("no host in the answer")?;
    let pid = body["pid"].as_u64().ok_or("no pid in the answer")?;
    let vms = body["vms"].as_array().ok_or("no vms in the answer")?;
    vms.iter()
        .map(|vm| parse_vm(vm, host, pid, ts_ms, at))
        .collect()
}

fn u64_at(v: &Value, what: &str) -> Result<u64, String> {
    v.as_u64().ok_or_else(|| format!("{what} is not a number"))
}

fn parse_vm(
    vm: &Value,
    host: &str,
    pid: u64,
    ts_ms: fleetmind_schema::TimestampMs,
    at: Instant,
) -> Result<VmReading, String> {
    let name = vm["name"].as_str().ok_or("a VM without a name")?;
    let id = u64_at(&vm["id"], "id")?;
    let kvm_vcpus = vm["kvm"]["vcpus"].as_array().cloned().unwrap_or_default();
    let threads = vm["threads"].as_array().cloned().unwrap_or_default();
    let vcpus = threads
        .iter()
        .map(|t| {
            let index = t["vcpu"].as_u64().unwrap_or(0);
            VcpuReading {
                vcpu: u32::try_from(index).unwrap_or(u32::MAX),
                tid: t["tid"].as_u64().and_then(|v| u32::try_from(v).ok()),
                run_ns: t["run_ns"].as_u64(),
                wait_ns: t["wait_ns"].as_u64(),
                host_cpu: t["last_cpu"].as_u64().and_then(|v| u32::try_from(v).ok()),
                affinity: t["allowed_cpus"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|c| c.as_u64().and_then(|c| u32::try_from(c).ok()))
                            .collect()
                    })
                    .unwrap_or_default(),
                exits: usize::try_from(index)
                    .ok()
                    .and_then(|i| kvm_vcpus.get(i))
                    .and_then(|s| s["exits"].as_u64()),
            }
        })
        .collect();
    // VM-wide exit counters: each vCPU's, summed.
    let mut exits: Vec<(String, u64)> = Vec::new();
    for stats in &kvm_vcpus {
        let Some(map) = stats.as_object() else {
            continue;
        };
        for (stat, value) in map {
            let (true, Some(value)) = (is_exit_counter(stat), value.as_u64()) else {
                continue;
            };
            match exits.iter_mut().find(|(n, _)| n == stat) {
                Some((_, total)) => *total = total.saturating_add(value),
                None => exits.push((stat.clone(), value)),
            }
        }
    }
    exits.sort();
    let memory = &vm["memory"];
    let numa_resident = memory["resident_per_node"]
        .as_object()
        .map(|nodes| {
            nodes
                .iter()
                .filter_map(|(node, bytes)| {
                    Some(NodeBytes {
                        node: node.parse().ok()?,
                        bytes: bytes.as_u64()?,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let balloon = &vm["balloon"];
    Ok(VmReading {
        ts_ms,
        at,
        host: host.to_owned(),
        vm: format!("{host}/{name}"),
        name: name.to_owned(),
        vmm: VmmKind::Builtin,
        instance: (pid << 32) | (id & 0xFFFF_FFFF),
        vmm_pid: u32::try_from(pid).ok(),
        mem_bytes: u64_at(&memory["guest_bytes"], "memory.guest_bytes")?,
        rss_bytes: memory["resident_bytes"].as_u64().unwrap_or(0),
        numa_resident,
        balloon_target_bytes: balloon["target_mib"].as_u64().map(|m| m << 20),
        balloon_actual_bytes: balloon["actual_bytes"].as_u64(),
        guest_free_bytes: balloon["guest_free_bytes"].as_u64(),
        // The guest counts the 4 KiB working-set pages it writes.
        dirty_bytes: vm["guest"]["mem_ops"]
            .as_u64()
            .map(|pages| pages.saturating_mul(4096)),
        vcpus,
        exits,
    })
}

/// The `<name>.sock` files of `dir`, sorted; none when the directory does not exist.
#[must_use]
pub fn discover(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut sockets: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "sock"))
        .collect();
    sockets.sort();
    sockets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_counters_are_picked_by_name() {
        for name in [
            "exits",
            "io_exits",
            "halt_exits",
            "insn_emulation",
            "hypercalls",
        ] {
            assert!(is_exit_counter(name), "{name}");
        }
        for name in [
            "halt_wait_ns",
            "nmi_window_exits_ns_x",
            "preemption_reported",
        ] {
            assert!(!is_exit_counter(name), "{name}");
        }
    }

    #[test]
    fn a_stats_answer_becomes_readings() {
        let body = serde_json::json!({
            "host": "demo-host-1",
            "pid": 4242,
            "vms": [{
                "id": 3, "name": "web-1-1", "state": "running",
                "kvm": {"vm": {"remote_tlb_flush": 1},
                        "vcpus": [{"exits": 100, "io_exits": 0, "insn_emulation": 40, "halt_wait_ns": 9},
                                  {"exits": 50, "io_exits": 2, "insn_emulation": 10, "halt_wait_ns": 9}]},
                "threads": [{"vcpu": 0, "tid": 11, "run_ns": 5, "wait_ns": 1, "last_cpu": 1, "allowed_cpus": [0, 1]},
                            {"vcpu": 1, "tid": 12, "run_ns": 6, "wait_ns": 2, "last_cpu": null, "allowed_cpus": [1]}],
                "memory": {"guest_bytes": 67108864, "resident_bytes": 4096, "resident_per_node": {"0": 4096}},
                "balloon": {"target_mib": 8, "actual_bytes": 4096, "guest_free_bytes": 1024}
            }]
        });
        let at = Instant::now();
        let readings = parse_stats(&body, 7, at).expect("parses");
        assert_eq!(readings.len(), 1);
        let r = &readings[0];
        assert_eq!(r.vm, "demo-host-1/web-1-1");
        assert_eq!(r.instance, (4242 << 32) | 3);
        assert_eq!(
            r.exits,
            vec![
                ("exits".to_owned(), 150),
                ("insn_emulation".to_owned(), 50),
                ("io_exits".to_owned(), 2)
            ]
        );
        assert_eq!(r.vcpus[1].exits, Some(50));
        assert_eq!(r.vcpus[1].host_cpu, None);
        assert_eq!(r.vcpus[0].affinity, vec![0, 1]);
        assert_eq!(
            r.numa_resident,
            vec![NodeBytes {
                node: 0,
                bytes: 4096
            }]
        );
        assert_eq!(r.balloon_target_bytes, Some(8 << 20));
        assert_eq!(r.mem_bytes, 64 << 20);

        let err = parse_stats(
            &serde_json::json!({"host": "h", "pid": 1, "vms": [{"name": "a"}]}),
            7,
            at,
        )
        .unwrap_err();
        assert!(err.contains("id"), "{err}");
    }

    #[test]
    fn discovery_finds_sockets_sorted() {
        let dir = std::env::temp_dir().join(format!("fm-discover-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["b.sock", "a.sock", "x.txt"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        let found = discover(&dir);
        assert_eq!(found, vec![dir.join("a.sock"), dir.join("b.sock")]);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(discover(&dir).is_empty());
    }
}

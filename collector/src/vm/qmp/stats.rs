//! The answers of `query-stats`, `query-stats-schemas` and `query-cpus-fast`, turned into exit
//! counters per VM and per vCPU.
//!
//! Which statistics become [`VmReading::exits`](crate::vm::VmReading::exits): every statistic
//! of the `kvm` provider whose name is an exit counter
//! ([`crate::vm::builtin::is_exit_counter`], the same rule as for the
//! built-in VMM, so both sources report the same names) and which is a dimensionless
//! cumulative count (per `query-stats-schemas`; a QEMU without schemas is trusted for names that
//! pass the rule). vCPU-level statistics are summed over vCPUs; VM-level ones that pass the
//! rule are added under their own name (KVM has none on x86 today: its VM-level statistics
//! are MMU work, not exits; they would show up without a code change if a kernel adds some).
//! Which counters move for a given guest action depends on the KVM flavour (on PVM, port I/O
//! of a guest that is not PVM-aware moves `exits` and `insn_emulation`, not `io_exits`), so all
//! of them are kept. Each vCPU's own `exits` becomes its
//! [`VcpuReading::exits`](crate::vm::VcpuReading::exits).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

use crate::vm::builtin::is_exit_counter;

/// The only provider whose statistics we read: KVM's binary stats as QEMU forwards them.
const PROVIDER: &str = "kvm";

/// Which `kvm` statistics are dimensionless cumulative counts, by target (`vm`, `vcpu`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CounterSchema {
    /// Names per target.
    counters: HashMap<String, HashSet<String>>,
    /// Whether the schema was known (QEMU answered `query-stats-schemas`).
    known: bool,
}

impl CounterSchema {
    /// A schema that knows nothing: every name that passes [`is_exit_counter`] is taken.
    #[must_use]
    pub fn unknown() -> Self {
        Self::default()
    }

    /// Parses the answer of `query-stats-schemas`.
    #[must_use]
    pub fn parse(answer: &Value) -> Self {
        let mut counters: HashMap<String, HashSet<String>> = HashMap::new();
        for entry in answer.as_array().into_iter().flatten() {
            if entry["provider"] != PROVIDER {
                continue;
            }
            let Some(target) = entry["target"].as_str() else {
                continue;
            };
            let names = counters.entry(target.to_string()).or_default();
            for stat in entry["stats"].as_array().into_iter().flatten() {
                // A unit (seconds, bytes, cycles, boolean) means a quantity, not a count.
                if stat["type"] == "cumulative"
                    && stat.get("unit").is_none()
                    && let Some(name) = stat["name"].as_str()
                {
                    names.insert(name.to_string());
                }
            }
        }
        Self {
            counters,
            known: true,
        }
    }

    fn takes(&self, target: &str, name: &str) -> bool {
        is_exit_counter(name)
            && (!self.known
                || self
                    .counters
                    .get(target)
                    .is_some_and(|names| names.contains(name)))
    }
}

/// One vCPU of `query-cpus-fast`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuInfo {
    /// `cpu-index`.
    pub index: u32,
    /// `thread-id`: the host thread running it.
    pub thread_id: Option<u32>,
    /// `qom-path`, the key of the vCPU's entry in `query-stats`.
    pub qom_path: String,
}

/// Parses the answer of `query-cpus-fast`, sorted by index.
///
/// # Errors
///
/// A message when the answer is not a list of vCPUs with indexes.
pub fn parse_cpus(answer: &Value) -> Result<Vec<CpuInfo>, String> {
    let list = answer
        .as_array()
        .ok_or("query-cpus-fast did not return a list")?;
    let mut cpus = list
        .iter()
        .map(|cpu| {
            let index = cpu["cpu-index"]
                .as_u64()
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| format!("a vCPU without a cpu-index: {cpu}"))?;
            Ok(CpuInfo {
                index,
                thread_id: cpu["thread-id"]
                    .as_u64()
                    .and_then(|t| u32::try_from(t).ok()),
                qom_path: cpu["qom-path"].as_str().unwrap_or_default().to_string(),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    cpus.sort_by_key(|c| c.index);
    Ok(cpus)
}

/// Exit counters of one `query-stats` answer for one target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExitStats {
    /// One per entry of the answer: the VM, or one vCPU.
    pub entries: Vec<StatsEntry>,
}

/// The exit counters of the VM or of one vCPU.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsEntry {
    /// The vCPU's `qom-path`; `None` for the VM.
    pub qom_path: Option<String>,
    /// The counters taken, by name.
    pub counters: Vec<(String, u64)>,
}

/// Picks the exit counters of the `kvm` provider out of a `query-stats` answer for `target`.
#[must_use]
pub fn parse_stats(answer: &Value, target: &str, schema: &CounterSchema) -> ExitStats {
    let entries = answer
        .as_array()
        .into_iter()
        .flatten()
        .filter(|entry| entry["provider"] == PROVIDER)
        .map(|entry| {
            let counters = entry["stats"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|stat| {
                    let name = stat["name"].as_str()?;
                    let value = stat["value"].as_u64()?;
                    schema
                        .takes(target, name)
                        .then(|| (name.to_string(), value))
                })
                .collect();
            StatsEntry {
                qom_path: entry["qom-path"].as_str().map(str::to_string),
                counters,
            }
        })
        .collect();
    ExitStats { entries }
}

/// The VM's exit counters: vCPU counters summed over vCPUs plus the VM-level ones, by name.
#[must_use]
pub fn vm_totals(vm: &ExitStats, vcpus: &ExitStats) -> Vec<(String, u64)> {
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    for entry in vm.entries.iter().chain(&vcpus.entries) {
        for (name, value) in &entry.counters {
            let total = totals.entry(name.clone()).or_default();
            *total = total.saturating_add(*value);
        }
    }
    totals.into_iter().collect()
}

/// The `exits` counter of the vCPU at `qom_path`, if `query-stats` had it.
#[must_use]
pub fn vcpu_exits(vcpus: &ExitStats, qom_path: &str) -> Option<u64> {
    vcpus
        .entries
        .iter()
        .find(|entry| entry.qom_path.as_deref() == Some(qom_path))
        .and_then(|entry| {
            entry
                .counters
                .iter()
                .find(|(name, _)| name == "exits")
                .map(|(_, v)| *v)
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> CounterSchema {
        CounterSchema::parse(&json!([
            {"provider": "kvm", "target": "vcpu", "stats": [
                {"name": "exits", "type": "cumulative", "exponent": 0},
                {"name": "io_exits", "type": "cumulative", "exponent": 0},
                {"name": "insn_emulation", "type": "cumulative", "exponent": 0},
                {"name": "halt_wait_ns", "type": "cumulative", "unit": "seconds", "base": 10, "exponent": -9},
                {"name": "guest_mode", "type": "instant", "unit": "boolean", "exponent": 0},
                {"name": "fpu_reload", "type": "cumulative", "exponent": 0},
            ]},
            {"provider": "kvm", "target": "vm", "stats": [
                {"name": "mmu_cache_miss", "type": "cumulative", "exponent": 0},
            ]},
            {"provider": "cryptodev", "target": "cryptodev", "stats": []},
        ]))
    }

    fn vcpu_answer() -> Value {
        json!([
            {"provider": "kvm", "qom-path": "/machine/unattached/device[0]", "stats": [
                {"name": "exits", "value": 100}, {"name": "io_exits", "value": 0},
                {"name": "insn_emulation", "value": 5000}, {"name": "halt_wait_ns", "value": 7},
                {"name": "guest_mode", "value": false}, {"name": "fpu_reload", "value": 3},
                {"name": "halt_wait_hist", "value": [0, 1]},
            ]},
            {"provider": "kvm", "qom-path": "/machine/unattached/device[1]", "stats": [
                {"name": "exits", "value": 20}, {"name": "insn_emulation", "value": 1},
            ]},
        ])
    }

    #[test]
    fn exit_counters_are_summed_over_vcpus_and_others_dropped() {
        let schema = schema();
        let vcpus = parse_stats(&vcpu_answer(), "vcpu", &schema);
        let vm = parse_stats(
            &json!([{"provider": "kvm", "stats": [{"name": "mmu_cache_miss", "value": 4}]}]),
            "vm",
            &schema,
        );
        assert_eq!(
            vm_totals(&vm, &vcpus),
            vec![
                ("exits".to_string(), 120),
                ("insn_emulation".to_string(), 5001),
                ("io_exits".to_string(), 0),
            ]
        );
        assert_eq!(
            vcpu_exits(&vcpus, "/machine/unattached/device[1]"),
            Some(20)
        );
        assert_eq!(vcpu_exits(&vcpus, "/machine/unattached/device[9]"), None);
    }

    #[test]
    fn without_a_schema_names_decide() {
        let vcpus = parse_stats(&vcpu_answer(), "vcpu", &CounterSchema::unknown());
        let totals = vm_totals(&ExitStats::default(), &vcpus);
        assert!(totals.contains(&("exits".to_string(), 120)));
        assert!(
            !totals
                .iter()
                .any(|(n, _)| n == "fpu_reload" || n == "guest_mode")
        );
    }

    #[test]
    fn tcg_answers_nothing() {
        let vcpus = parse_stats(&json!([]), "vcpu", &schema());
        assert!(vm_totals(&ExitStats::default(), &vcpus).is_empty());
    }

    #[test]
    fn cpus_are_sorted_by_index() {
        let cpus = parse_cpus(&json!([
            {"cpu-index": 1, "thread-id": 11, "qom-path": "/machine/unattached/device[1]", "props": {}},
            {"cpu-index": 0, "thread-id": 10, "qom-path": "/machine/unattached/device[0]", "props": {}},
        ]))
        .expect("parses");
        assert_eq!(cpus[0].index, 0);
        assert_eq!(cpus[0].thread_id, Some(10));
        assert_eq!(cpus[1].qom_path, "/machine/unattached/device[1]");
        assert!(parse_cpus(&json!({})).is_err());
        assert!(parse_cpus(&json!([{"thread-id": 3}])).is_err());
    }
}

//! `fleetmind vm ...`: a client of the VMM hosts' control API over their Unix sockets.
//!
//! Without `--host` or `--socket` it talks to every host in the socket directory: `list`
//! gathers all their VMs, and a command on one VM finds the host that has it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use reqwest::Method;
use serde_json::{Value, json};

use crate::cli::{VmArgs, VmCommand};
use crate::vmm_host::{host_socket, socket_dir};

/// One VMM host's control API.
struct Host {
    name: String,
    socket: PathBuf,
    client: reqwest::Client,
}

/// A failed call, as the CLI reports it.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("{host}: cannot reach {socket}: {source}")]
    Unreachable {
        host: String,
        socket: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{host}: {message} (HTTP {status})")]
    Api {
        host: String,
        status: u16,
        message: String,
    },
}

impl Host {
    fn new(name: String, socket: PathBuf) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .unix_socket(socket.clone())
            .timeout(Duration::from_secs(30))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self {
            name,
            socket,
            client,
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, CallError> {
        let mut request = self
            .client
            .request(method, format!("http://localhost{path}"));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let unreachable = |source| CallError::Unreachable {
            host: self.name.clone(),
            socket: self.socket.display().to_string(),
            source,
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let value: Value = response.json().await.map_err(unreachable)?;
        if status.is_success() {
            Ok(value)
        } else {
            Err(CallError::Api {
                host: self.name.clone(),
                status: status.as_u16(),
                message: value["error"]["message"]
                    .as_str()
                    .unwrap_or("no error message")
                    .to_owned(),
            })
        }
    }
}

/// Percent-encodes a path segment.
fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The hosts this invocation talks to.
fn hosts(args: &VmArgs) -> anyhow::Result<Vec<Host>> {
    if let Some(socket) = &args.socket {
        let name = socket
            .file_stem()
            .map_or_else(|| "vmm".into(), |s| s.to_string_lossy().into_owned());
        return Ok(vec![Host::new(name, socket.clone())?]);
    }
    let dir = socket_dir(&args.dirs)?;
    if let Some(name) = &args.host {
        let socket = host_socket(&dir, name);
        anyhow::ensure!(
            socket.exists(),
            "no VMM host {name:?}: {} does not exist",
            socket.display()
        );
        return Ok(vec![Host::new(name.clone(), socket)?]);
    }
    let found = discover(&dir)?;
    anyhow::ensure!(
        !found.is_empty(),
        "no VMM hosts in {}: is `fleetmind run` running here with its demo fleet, or a \
         `fleetmind vmm` host? (use --data-dir or --config to point at its data directory)",
        dir.display()
    );
    found
        .into_iter()
        .map(|(name, socket)| Host::new(name, socket))
        .collect()
}

/// `<name>.sock` files of `dir`, sorted by name.
fn discover(dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    let mut found: Vec<_> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let path = e.path();
            let name = path
                .file_name()?
                .to_str()?
                .strip_suffix(".sock")?
                .to_owned();
            Some((name, path))
        })
        .collect();
    found.sort();
    Ok(found)
}

fn names(hosts: &[Host]) -> String {
    hosts
        .iter()
        .map(|h| h.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The one host that has VM `name`.
async fn host_of<'a>(hosts: &'a [Host], name: &str) -> anyhow::Result<&'a Host> {
    if let [only] = hosts {
        return Ok(only);
    }
    let mut have = Vec::new();
    for host in hosts {
        match host
            .call(Method::GET, &format!("/vmm/v1/vms/{}", segment(name)), None)
            .await
        {
            Ok(_) => have.push(host),
            Err(CallError::Api { status: 404, .. }) => {}
            Err(e) => tracing::warn!(error = %e, "skipping a VMM host"),
        }
    }
    match have.as_slice() {
        [one] => Ok(one),
        [] => anyhow::bail!("no VM named {name:?} on any VMM host ({})", names(hosts)),
        several => anyhow::bail!(
            "a VM named {name:?} is on several hosts ({}): choose one with --host",
            several
                .iter()
                .map(|h| h.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The host `create` goes to: the only one, or the one named.
fn create_host(hosts: &[Host]) -> anyhow::Result<&Host> {
    match hosts {
        [one] => Ok(one),
        _ => anyhow::bail!(
            "there are several VMM hosts ({}): choose one with --host",
            names(hosts)
        ),
    }
}

/// Reads a JSON argument: inline, `-` for stdin, or a file.
fn json_arg(text: &str, what: &str) -> anyhow::Result<Value> {
    let raw = if text.trim_start().starts_with('{') {
        text.to_owned()
    } else if text == "-" {
        std::io::read_to_string(std::io::stdin()).context("cannot read standard input")?
    } else {
        std::fs::read_to_string(text)
            .with_context(|| format!("cannot read the {what} file {text}"))?
    };
    serde_json::from_str(&raw).with_context(|| format!("the {what} is not valid JSON"))
}

/// Writes a line to stdout; a closed pipe (`| head`) ends the output quietly.
fn emit(line: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}")
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("fleetmind: cannot write to standard output: {e}");
    }
}

fn print_json(value: &Value) {
    emit(&serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string()));
}

/// A JSON scalar as table text (strings without quotes).
fn cell(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Runs one `fleetmind vm` command.
///
/// # Errors
///
/// Unreachable hosts, API errors (with the host, message and status), bad arguments.
pub async fn run(args: VmArgs) -> anyhow::Result<()> {
    let hosts = hosts(&args)?;
    match args.command {
        VmCommand::Hosts => {
            emit(&format!(
                "{:<16} {:<28} {:>4} {:>8}  SOCKET",
                "HOST", "HYPERVISOR", "VMS", "PID"
            ));
            for host in &hosts {
                match host.call(Method::GET, "/vmm/v1/health", None).await {
                    Ok(h) => {
                        let hypervisor = match h["hypervisor"]["state"].as_str() {
                            Some("available") => {
                                format!(
                                    "kvm ({})",
                                    h["hypervisor"]["flavour"].as_str().unwrap_or("?")
                                )
                            }
                            _ => format!(
                                "absent: {}",
                                h["hypervisor"]["reason"].as_str().unwrap_or("?")
                            ),
                        };
                        emit(&format!(
                            "{:<16} {:<28} {:>4} {:>8}  {}",
                            host.name,
                            hypervisor,
                            cell(&h["vms"]),
                            cell(&h["pid"]),
                            host.socket.display()
                        ));
                    }
                    Err(e) => emit(&format!("{:<16} unreachable: {e}", host.name)),
                }
            }
        }
        VmCommand::List { json } => {
            let mut all = Vec::new();
            for host in &hosts {
                let vms = host.call(Method::GET, "/vmm/v1/vms", None).await?;
                all.push(json!({"host": host.name, "vms": vms["vms"]}));
            }
            if json {
                print_json(&json!({ "hosts": all }));
            } else {
                print_table(&all);
            }
        }
        VmCommand::Create { spec } => {
            let spec = json_arg(&spec, "spec")?;
            let host = create_host(&hosts)?;
            print_json(&host.call(Method::POST, "/vmm/v1/vms", Some(spec)).await?);
        }
        VmCommand::Show { name } => vm_call(&hosts, &name, Method::GET, "", None).await?,
        VmCommand::Delete { name } => vm_call(&hosts, &name, Method::DELETE, "", None).await?,
        VmCommand::Pause { name } => vm_call(&hosts, &name, Method::POST, "/pause", None).await?,
        VmCommand::Resume { name } => vm_call(&hosts, &name, Method::POST, "/resume", None).await?,
        VmCommand::Level { name, level } => {
            vm_call(
                &hosts,
                &name,
                Method::PUT,
                "/level",
                Some(json!({ "level": level })),
            )
            .await?;
        }
        VmCommand::Workload { name, workload } => {
            let workload = json_arg(&workload, "workload")?;
            vm_call(&hosts, &name, Method::PUT, "/workload", Some(workload)).await?;
        }
        VmCommand::Stats { name } => vm_call(&hosts, &name, Method::GET, "/stats", None).await?,
        VmCommand::Pin { name, vcpu, cpus } => {
            let cpus = fleetmind_vmm_probe::host_facts::parse_id_list(&cpus)
                .with_context(|| format!("CPUS must be a list like 1 or 0-1,3 (got {cpus:?})"))?;
            let path = format!("/vcpus/{vcpu}/affinity");
            vm_call(
                &hosts,
                &name,
                Method::PUT,
                &path,
                Some(json!({ "cpus": cpus })),
            )
            .await?;
        }
        VmCommand::MoveMemory { name, node } => {
            vm_call(
                &hosts,
                &name,
                Method::PUT,
                "/memory/node",
                Some(json!({ "node": node })),
            )
            .await?;
        }
        VmCommand::Balloon { name, target_mib } => match target_mib {
            Some(target) => {
                let body = json!({ "target_mib": target });
                vm_call(&hosts, &name, Method::PUT, "/balloon", Some(body)).await?;
            }
            None => vm_call(&hosts, &name, Method::GET, "/balloon", None).await?,
        },
    }
    Ok(())
}

/// Calls `method /vmm/v1/vms/<name><suffix>` on the host that has the VM and prints the answer.
async fn vm_call(
    hosts: &[Host],
    name: &str,
    method: Method,
    suffix: &str,
    body: Option<Value>,
) -> anyhow::Result<()> {
    let host = host_of(hosts, name).await?;
    let path = format!("/vmm/v1/vms/{}{suffix}", segment(name));
    print_json(&host.call(method, &path, body).await?);
    Ok(())
}

fn print_table(hosts: &[Value]) {
    emit(&format!(
        "{:<14} {:<16} {:<8} {:>5} {:>7} {:<8} {:>5} {:>11}",
        "HOST", "VM", "STATE", "VCPUS", "MEM_MIB", "WORKLOAD", "LEVEL", "BALLOON_MIB"
    ));
    for host in hosts {
        for vm in host["vms"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let balloon_mib = vm["balloon"]["actual_bytes"].as_u64().unwrap_or(0) >> 20;
            emit(&format!(
                "{:<14} {:<16} {:<8} {:>5} {:>7} {:<8} {:>5} {:>11}",
                cell(&host["host"]),
                cell(&vm["name"]),
                cell(&vm["state"]),
                cell(&vm["spec"]["vcpus"]),
                cell(&vm["spec"]["mem_mib"]),
                cell(&vm["spec"]["workload"]["kind"]),
                cell(&vm["spec"]["level"]),
                balloon_mib
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(segment("web-1.a_b"), "web-1.a_b");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn discovery_lists_sockets_by_name() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["b.sock", "a.sock", "notes.txt"] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let found: Vec<_> = discover(dir.path())
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(found, ["a", "b"]);
        assert!(discover(&dir.path().join("missing")).unwrap().is_empty());
    }
}

//! libvirt-managed QEMU: which domains run on this host and which QMP socket fleetmind may read
//! for each, found without the libvirt library (no C dependency, no libvirtd connection).
//!
//! libvirt keeps one status file per running domain in its QEMU run directory
//! ([`DEFAULT_RUN_DIR`], `/run/libvirt/qemu/<domain>.xml`): a `<domstatus pid=...>` holding
//! libvirt's own monitor socket (`<monitor path='/var/lib/libvirt/qemu/domain-<id>-<name>/
//! monitor.sock'/>`) and the live `<domain>` definition. [`discover`] reads just what it needs
//! from these files by plain string scanning (the format is machine-written and stable; a
//! file caught half-written is skipped and read at the next scan).
//!
//! # One client per monitor
//!
//! A QMP monitor serves one client at a time, and libvirt holds its own monitor for as long as
//! the domain runs. Connecting to it anyway would at best hang until libvirt lets go, and at
//! worst (while libvirtd restarts) take the monitor from libvirt and break its management of
//! the domain. So fleetmind reads a libvirt domain only through a **second** QMP monitor
//! declared in the domain's definition:
//!
//! ```xml
//! <domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
//!   ...
//!   <qemu:commandline>
//!     <qemu:arg value='-qmp'/>
//!     <qemu:arg value='unix:/run/fleetmind/qmp/NAME.sock,server=on,wait=off'/>
//!   </qemu:commandline>
//! </domain>
//! ```
//!
//! (`-chardev socket,id=X,path=P,server=on,wait=off` with `-mon chardev=X,mode=control` works
//! too.) A domain with only libvirt's monitor is still listed by [`discover`], with
//! [`LibvirtDomain::qmp_socket`] `None`, and left out of [`discover_qmp_sockets`]: it is not
//! read, and the caller may report it. libvirt marks such domains tainted (`custom-argv`),
//! which is harmless.

use std::path::{Path, PathBuf};

use fleetmind_schema::VmmKind;

use super::qmp::QmpSourceConfig;

/// Where libvirt's QEMU driver keeps its status files (system instance).
pub const DEFAULT_RUN_DIR: &str = "/run/libvirt/qemu";

/// One running libvirt domain, as its status file describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibvirtDomain {
    /// The domain name.
    pub name: String,
    /// QEMU's pid, if the status file says.
    pub pid: Option<u32>,
    /// libvirt's own monitor socket (not for fleetmind: see the module docs).
    pub libvirt_monitor: Option<PathBuf>,
    /// Extra QMP sockets declared with `<qemu:commandline>`, in order.
    pub extra_qmp: Vec<PathBuf>,
}

impl LibvirtDomain {
    /// The socket fleetmind reads: the first extra QMP monitor, if the domain declares one.
    #[must_use]
    pub fn qmp_socket(&self) -> Option<&Path> {
        self.extra_qmp.first().map(PathBuf::as_path)
    }

    /// Settings of a [`crate::vm::qmp::QmpSource`] for this domain on `host`, if it has a
    /// socket fleetmind may read. The samples name the VMM `libvirt` and fall back to the
    /// domain name when QEMU has no `-name` (libvirt always passes one).
    #[must_use]
    pub fn source_config(&self, host: &str, proc_root: &Path) -> Option<QmpSourceConfig> {
        let socket = self.qmp_socket()?;
        let mut config = QmpSourceConfig::new(socket, host);
        config.proc_root = proc_root.to_path_buf();
        config.name = Some(self.name.clone());
        config.vmm = VmmKind::Libvirt;
        Some(config)
    }
}

/// Why a status file could not be read as a domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseStatusError {
    /// No `<domain>` element with a `<name>` (not a status file, or caught half-written).
    #[error("no <domain> with a <name>")]
    NoName,
}

/// Why the run directory could not be scanned.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    /// The directory exists but cannot be listed.
    #[error("cannot list {dir}", dir = dir.display())]
    ListDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The running domains of `run_dir` (libvirt's QEMU run directory), sorted by name. A missing
/// directory means no libvirt here: no domains, not an error. Files that cannot be read or
/// parsed are skipped (logged at debug): a domain starting or stopping during the scan.
///
/// # Errors
///
/// [`DiscoverError::ListDir`] when the directory exists but cannot be listed.
pub fn discover(run_dir: &Path) -> Result<Vec<LibvirtDomain>, DiscoverError> {
    let entries = match std::fs::read_dir(run_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(DiscoverError::ListDir {
                dir: run_dir.to_path_buf(),
                source,
            });
        }
    };
    let mut domains: Vec<LibvirtDomain> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "xml") && path.is_file())
        .filter_map(|path| {
            let parsed = std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|text| parse_status(&text).map_err(|e| e.to_string()));
            parsed
                .inspect_err(|error| {
                    tracing::debug!(file = %path.display(), %error, "libvirt status file skipped");
                })
                .ok()
        })
        .collect();
    domains.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(domains)
}

/// `(domain name, QMP socket)` of every running domain of `run_dir` that fleetmind may read
/// (see the module docs); domains with only libvirt's monitor are left out (logged at debug).
///
/// # Errors
///
/// As [`discover`].
pub fn discover_qmp_sockets(run_dir: &Path) -> Result<Vec<(String, PathBuf)>, DiscoverError> {
    Ok(discover(run_dir)?
        .into_iter()
        .filter_map(|domain| match domain.qmp_socket() {
            Some(socket) => Some((domain.name.clone(), socket.to_path_buf())),
            None => {
                tracing::debug!(
                    domain = %domain.name,
                    "libvirt domain without a second QMP monitor: not read"
                );
                None
            }
        })
        .collect())
}

/// Reads one status file (`<domstatus>` with its `<domain>`).
///
/// # Errors
///
/// [`ParseStatusError::NoName`] when there is no `<domain>` with a `<name>`.
pub fn parse_status(xml: &str) -> Result<LibvirtDomain, ParseStatusError> {
    let domain_at = find_tag(xml, "domain").ok_or(ParseStatusError::NoName)?;
    let domain = &xml[domain_at..];
    let name = element_text(domain, "name")
        .map(unescape)
        .filter(|n| !n.is_empty())
        .ok_or(ParseStatusError::NoName)?;
    let status = find_tag(xml, "domstatus").map(|at| start_tag(&xml[at..]));
    let pid = status
        .and_then(|tag| attribute(tag, "pid"))
        .and_then(|p| p.parse().ok());
    let libvirt_monitor = find_tag(&xml[..domain_at], "monitor")
        .and_then(|at| attribute(start_tag(&xml[at..]), "path"))
        .map(|p| PathBuf::from(unescape(p)));
    Ok(LibvirtDomain {
        name,
        pid,
        libvirt_monitor,
        extra_qmp: extra_qmp_sockets(&commandline_args(domain)),
    })
}

/// The values of the `<qemu:arg>` elements of `<qemu:commandline>`, in order.
fn commandline_args(domain: &str) -> Vec<String> {
    let Some(start) = find_tag(domain, "qemu:commandline") else {
        return Vec::new();
    };
    let block = &domain[start..];
    let block = &block[..block.find("</qemu:commandline>").unwrap_or(block.len())];
    let mut args = Vec::new();
    let mut rest = block;
    while let Some(at) = find_tag(rest, "qemu:arg") {
        let tag = start_tag(&rest[at..]);
        if let Some(value) = attribute(tag, "value") {
            args.push(unescape(value));
        }
        rest = &rest[at + tag.len()..];
    }
    args
}

/// Unix-socket QMP monitors among QEMU arguments: `-qmp unix:PATH[,opts]`, and
/// `-chardev socket,id=X,path=PATH,...` used by `-mon chardev=X,mode=control`.
fn extra_qmp_sockets(args: &[String]) -> Vec<PathBuf> {
    let pairs = || args.windows(2).map(|w| (w[0].as_str(), w[1].as_str()));
    let option = |spec: &str, key: &str| {
        spec.split(',')
            .find_map(|part| part.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_string)
    };
    let mut sockets = Vec::new();
    for (flag, value) in pairs() {
        match flag.trim_start_matches('-') {
            "qmp" | "qmp-pretty" => {
                if let Some(spec) = value.strip_prefix("unix:") {
                    let path = spec.split(',').next().unwrap_or_default();
                    let path = path.strip_prefix("path=").unwrap_or(path);
                    if !path.is_empty() {
                        sockets.push(PathBuf::from(path));
                    }
                }
            }
            "mon" => {
                let control = value.split(',').any(|p| p == "mode=control");
                let Some(chardev) = option(value, "chardev").filter(|_| control) else {
                    continue;
                };
                let socket = pairs().find_map(|(f, v)| {
                    (f.trim_start_matches('-') == "chardev"
                        && v.starts_with("socket,")
                        && option(v, "id").as_deref() == Some(chardev.as_str()))
                    .then(|| option(v, "path"))
                    .flatten()
                });
                sockets.extend(socket.map(PathBuf::from));
            }
            _ => {}
        }
    }
    sockets
}

/// Byte offset of the first start tag `<tag` (followed by a space, `>` or `/`).
fn find_tag(xml: &str, tag: &str) -> Option<usize> {
    let needle = format!("<{tag}");
    let mut from = 0;
    while let Some(at) = xml[from..].find(&needle) {
        let at = from + at;
        match xml[at + needle.len()..].chars().next() {
            Some(c) if c.is_ascii_whitespace() || c == '>' || c == '/' => return Some(at),
            _ => from = at + needle.len(),
        }
    }
    None
}

/// The start tag at the beginning of `xml`, through its `>`.
fn start_tag(xml: &str) -> &str {
    xml.find('>').map_or(xml, |end| &xml[..=end])
}

/// The raw value of attribute `name` in a start tag (quoted with `'` or `"`).
fn attribute<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let mut from = 0;
    while let Some(at) = tag[from..].find(name) {
        let at = from + at;
        from = at + name.len();
        let preceded = tag[..at].ends_with(|c: char| c.is_ascii_whitespace());
        let rest = tag[from..].trim_start();
        if !preceded || !rest.starts_with('=') {
            continue;
        }
        let rest = rest[1..].trim_start();
        let quote = rest.chars().next().filter(|q| *q == '\'' || *q == '"')?;
        let value = &rest[1..];
        return value.find(quote).map(|end| &value[..end]);
    }
    None
}

/// The text of the first `<name>...</name>` element in `xml`.
fn element_text<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let at = find_tag(xml, name)?;
    let tag = start_tag(&xml[at..]);
    if tag.ends_with("/>") {
        return Some("");
    }
    let body = &xml[at + tag.len()..];
    body.find(&format!("</{name}>"))
        .map(|end| body[..end].trim())
}

/// Replaces XML's predefined entities.
fn unescape(text: &str) -> String {
    text.replace("&apos;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/libvirt/run")
    }

    #[test]
    fn discovers_running_domains_and_their_sockets() {
        let domains = discover(&run_dir()).expect("scans");
        let names: Vec<&str> = domains.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["batch7", "db's vm", "web1"], "broken.xml skipped");

        let web1 = &domains[2];
        assert_eq!(web1.pid, Some(4242));
        assert_eq!(
            web1.libvirt_monitor.as_deref(),
            Some(Path::new(
                "/var/lib/libvirt/qemu/domain-3-web1/monitor.sock"
            ))
        );
        assert_eq!(
            web1.qmp_socket(),
            Some(Path::new("/run/fleetmind/qmp/web1.sock"))
        );

        let db = &domains[1];
        assert_eq!(db.pid, Some(5151));
        assert_eq!(
            db.libvirt_monitor.as_deref(),
            Some(Path::new(
                "/var/lib/libvirt/qemu/domain-7-db's vm/monitor.sock"
            ))
        );
        assert_eq!(
            db.qmp_socket(),
            Some(Path::new("/run/fleetmind/qmp/db.sock"))
        );

        let batch7 = &domains[0];
        assert_eq!(batch7.qmp_socket(), None, "only libvirt's own monitor");
        assert!(batch7.libvirt_monitor.is_some());
    }

    #[test]
    fn pairs_only_for_domains_with_a_second_monitor() {
        assert_eq!(
            discover_qmp_sockets(&run_dir()).expect("scans"),
            vec![
                (
                    "db's vm".to_string(),
                    PathBuf::from("/run/fleetmind/qmp/db.sock")
                ),
                (
                    "web1".to_string(),
                    PathBuf::from("/run/fleetmind/qmp/web1.sock")
                ),
            ]
        );
    }

    #[test]
    fn a_missing_run_dir_is_no_libvirt() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(
            discover(&dir.path().join("absent"))
                .expect("no error")
                .is_empty()
        );
    }

    #[test]
    fn source_configs_name_libvirt() {
        let domains = discover(&run_dir()).expect("scans");
        let config = domains[2]
            .source_config("h1", Path::new("/host/proc"))
            .expect("web1 has a socket");
        assert_eq!(config.vmm, VmmKind::Libvirt);
        assert_eq!(config.name.as_deref(), Some("web1"));
        assert_eq!(config.proc_root, Path::new("/host/proc"));
        assert!(domains[0].source_config("h1", Path::new("/proc")).is_none());
    }

    #[test]
    fn qmp_argument_forms() {
        let args = |a: &[&str]| a.iter().map(|s| (*s).to_string()).collect::<Vec<_>>();
        assert_eq!(
            extra_qmp_sockets(&args(&["-qmp", "unix:/a.sock"])),
            [PathBuf::from("/a.sock")]
        );
        assert_eq!(
            extra_qmp_sockets(&args(&["-qmp", "unix:path=/b.sock,server=on,wait=off"])),
            [PathBuf::from("/b.sock")]
        );
        // TCP monitors and human monitors are not ours.
        assert!(extra_qmp_sockets(&args(&["-qmp", "tcp:127.0.0.1:4444,server=on"])).is_empty());
        assert!(
            extra_qmp_sockets(&args(&[
                "-chardev",
                "socket,id=hm,path=/c.sock,server=on",
                "-mon",
                "chardev=hm,mode=readline",
            ]))
            .is_empty()
        );
    }

    #[test]
    fn attributes_and_tags_are_matched_whole() {
        let tag = "<vcpu id='0' xpid='9' pid=\"12\"/>";
        assert_eq!(attribute(tag, "pid"), Some("12"));
        assert_eq!(find_tag("<domstatus a='1'><domain>", "domain"), Some(17));
        assert_eq!(parse_status("<domstatus/>"), Err(ParseStatusError::NoName));
    }
}

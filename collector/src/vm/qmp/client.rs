//! A small QMP client: one connection to one QEMU monitor socket.
//!
//! QMP is line-delimited JSON over a stream socket. The server speaks first with a greeting
//! (`{"QMP": {"version": ..., "capabilities": [...]}}`); the client leaves capabilities
//! negotiation mode with `qmp_capabilities`; then each command (`{"execute", "arguments",
//! "id"}`) gets exactly one answer (`{"return": ..., "id"}` or `{"error": {"class", "desc"},
//! "id"}`), in order. Asynchronous events (`{"event": ...}`) may arrive between answers at any
//! time; this client skips them.
//!
//! ```text
//!  client                                  QEMU
//!    |  connect                              |
//!    | <------------- {"QMP": {...}}         |  greeting
//!    | {"execute":"qmp_capabilities"} -----> |
//!    | <------------- {"return": {}}         |
//!    | {"execute":"query-name","id":1} ----> |
//!    | <------------- {"event":"RESUME",...} |  skipped
//!    | <------------- {"return":{...},"id":1}|
//! ```
//!
//! Every read has a timeout, and every error names the socket: a QEMU that hangs, or a monitor
//! that another client already holds (a QMP socket serves one client at a time; the next one
//! is accepted by the kernel but gets no greeting until the first leaves), shows up as a
//! timeout naming the path rather than a stalled collector. After any error the connection is
//! in an unknown state; callers drop it and connect again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// The longest line (one answer) accepted: `query-stats` of a VM with hundreds of vCPUs is a
/// few MiB; anything longer is a broken peer.
const MAX_LINE_BYTES: u64 = 64 << 20;

/// What went wrong talking to a QMP socket. Every variant names the socket.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be connected to (no QEMU there, or no permission).
    #[error("{path}: connect failed", path = path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the connection failed.
    #[error("{path}: {what} failed", path = path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// What was being done (`send query-name`, `read the greeting`...).
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// QEMU did not answer in time.
    #[error("{path}: no answer to {what} within {timeout:?}{hint}", path = path.display())]
    Timeout {
        /// The socket.
        path: PathBuf,
        /// What was awaited.
        what: String,
        /// The timeout.
        timeout: Duration,
        /// A hint for the operator (for the greeting: another client may hold the monitor).
        hint: &'static str,
    },
    /// QEMU closed the connection (it exited, or the monitor was reset).
    #[error("{path}: connection closed by QEMU while waiting for {what}", path = path.display())]
    Closed {
        /// The socket.
        path: PathBuf,
        /// What was awaited.
        what: String,
    },
    /// The peer does not speak QMP, or broke the protocol.
    #[error("{path}: protocol error: {message}", path = path.display())]
    Protocol {
        /// The socket.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// QEMU answered a command with an error.
    #[error("{path}: {command} failed: {class}: {desc}", path = path.display())]
    Command {
        /// The socket.
        path: PathBuf,
        /// The command.
        command: String,
        /// QMP's error class (`CommandNotFound`, `DeviceNotActive`, `GenericError`...).
        class: String,
        /// QEMU's description.
        desc: String,
    },
}

impl QmpError {
    /// QMP's error class when QEMU answered with an error, e.g. `CommandNotFound`.
    #[must_use]
    pub fn class(&self) -> Option<&str> {
        match self {
            Self::Command { class, .. } => Some(class),
            _ => None,
        }
    }

    /// Whether the connection is still usable after this error: only a well-formed error
    /// answer from QEMU leaves it in a known state.
    #[must_use]
    pub fn connection_usable(&self) -> bool {
        matches!(self, Self::Command { .. })
    }

    /// The message with its sources, for logs and [`crate::vm::SourceError`]
    /// (`/run/vm1.qmp: connect failed: No such file or directory (os error 2)`).
    #[must_use]
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        text
    }
}

/// QEMU's version from the greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct QemuVersion {
    /// Major.
    pub major: u64,
    /// Minor.
    pub minor: u64,
    /// Micro.
    pub micro: u64,
}

/// One open QMP connection, past capabilities negotiation.
#[derive(Debug)]
pub struct QmpClient {
    path: PathBuf,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    timeout: Duration,
    next_id: u64,
    version: Option<QemuVersion>,
    peer_pid: Option<i32>,
    events_skipped: u64,
}

impl QmpClient {
    /// Connects to the QMP socket at `path`, reads the greeting and leaves negotiation mode.
    /// Every later read waits at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`QmpError::Connect`] when nothing listens there; [`QmpError::Timeout`] when no greeting
    /// comes (QEMU hangs, or another client holds this monitor); [`QmpError::Protocol`] when
    /// the peer does not speak QMP.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let stream = tokio::time::timeout(timeout, UnixStream::connect(path))
            .await
            .map_err(|_| QmpError::Timeout {
                path: path.to_path_buf(),
                what: "connect".into(),
                timeout,
                hint: "",
            })?
            .map_err(|source| QmpError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        // The peer of a connected Unix socket is the process that listens: QEMU itself.
        let peer_pid = stream.peer_cred().ok().and_then(|c| c.pid());
        let (read, writer) = stream.into_split();
        let mut client = Self {
            path: path.to_path_buf(),
            reader: BufReader::new(read),
            writer,
            timeout,
            next_id: 1,
            version: None,
            peer_pid,
            events_skipped: 0,
        };
        let greeting = client
            .read_message(
                "the greeting",
                " (QEMU hangs, or another client holds this monitor: a QMP socket serves one \
                 client at a time)",
            )
            .await?;
        let Some(qmp) = greeting.get("QMP") else {
            return Err(client.protocol(format!("expected a QMP greeting, got {greeting}")));
        };
        let v = &qmp["version"]["qemu"];
        client.version = match (
            v["major"].as_u64(),
            v["minor"].as_u64(),
            v["micro"].as_u64(),
        ) {
            (Some(major), Some(minor), Some(micro)) => Some(QemuVersion {
                major,
                minor,
                micro,
            }),
            _ => None,
        };
        client.execute("qmp_capabilities", None).await?;
        Ok(client)
    }

    /// The socket this client is connected to.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// QEMU's version, from the greeting.
    #[must_use]
    pub fn version(&self) -> Option<QemuVersion> {
        self.version
    }

    /// The process id of QEMU (the peer credentials of the socket), if the kernel told.
    #[must_use]
    pub fn peer_pid(&self) -> Option<i32> {
        self.peer_pid
    }

    /// How many asynchronous events were skipped so far.
    #[must_use]
    pub fn events_skipped(&self) -> u64 {
        self.events_skipped
    }

    /// Runs `command` with `arguments` and returns its `return` value.
    ///
    /// # Errors
    ///
    /// [`QmpError::Command`] when QEMU answers with an error (the connection stays usable);
    /// any other variant when the connection failed (drop the client).
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({ "execute": command, "id": id });
        if let Some(arguments) = arguments {
            message["arguments"] = arguments;
        }
        let mut line = message.to_string();
        line.push('\n');
        let what = || format!("send {command}");
        match tokio::time::timeout(self.timeout, self.writer.write_all(line.as_bytes())).await {
            Err(_) => {
                return Err(QmpError::Timeout {
                    path: self.path.clone(),
                    what: what(),
                    timeout: self.timeout,
                    hint: "",
                });
            }
            Ok(Err(source)) => {
                return Err(QmpError::Io {
                    path: self.path.clone(),
                    what: what(),
                    source,
                });
            }
            Ok(Ok(())) => {}
        }
        loop {
            let answer = self.read_message(command, "").await?;
            if answer.get("event").is_some() {
                self.events_skipped += 1;
                tracing::trace!(socket = %self.path.display(), event = %answer["event"], "QMP event skipped");
                continue;
            }
            if answer.get("id").and_then(Value::as_u64) != Some(id) {
                return Err(self.protocol(format!(
                    "answer to {command} has id {} instead of {id}",
                    answer.get("id").unwrap_or(&Value::Null)
                )));
            }
            if let Some(error) = answer.get("error") {
                return Err(QmpError::Command {
                    path: self.path.clone(),
                    command: command.to_string(),
                    class: error["class"].as_str().unwrap_or("unknown").to_string(),
                    desc: error["desc"].as_str().unwrap_or("").to_string(),
                });
            }
            return match answer.get("return") {
                Some(value) => Ok(value.clone()),
                None => Err(self.protocol(format!("answer to {command} has no return: {answer}"))),
            };
        }
    }

    /// Sets the balloon target to `bytes` of guest memory (QMP `balloon`). QEMU answers at
    /// once; the guest gets there over time (watch `query-balloon`).
    ///
    /// # Errors
    ///
    /// As [`Self::execute`]; `DeviceNotActive` when the VM has no (active) balloon.
    pub async fn balloon(&mut self, bytes: u64) -> Result<(), QmpError> {
        self.execute("balloon", Some(json!({ "value": bytes })))
            .await
            .map(drop)
    }

    /// Asks the balloon device at QOM path `device` to refresh its guest statistics every
    /// `seconds` (0 stops the polling). Without it, `guest-stats` is not updated.
    ///
    /// # Errors
    ///
    /// As [`Self::execute`].
    pub async fn set_guest_stats_polling_interval(
        &mut self,
        device: &str,
        seconds: u32,
    ) -> Result<(), QmpError> {
        self.execute(
            "qom-set",
            Some(json!({
                "path": device,
                "property": "guest-stats-polling-interval",
                "value": seconds,
            })),
        )
        .await
        .map(drop)
    }

    fn protocol(&self, message: String) -> QmpError {
        QmpError::Protocol {
            path: self.path.clone(),
            message,
        }
    }

    /// Reads one JSON line, waiting at most the timeout.
    async fn read_message(&mut self, what: &str, hint: &'static str) -> Result<Value, QmpError> {
        let mut line = String::new();
        let mut limited = (&mut self.reader).take(MAX_LINE_BYTES);
        let n = match tokio::time::timeout(self.timeout, limited.read_line(&mut line)).await {
            Err(_) => {
                return Err(QmpError::Timeout {
                    path: self.path.clone(),
                    what: what.to_string(),
                    timeout: self.timeout,
                    hint,
                });
            }
            Ok(Err(source)) => {
                return Err(QmpError::Io {
                    path: self.path.clone(),
                    what: format!("read {what}"),
                    source,
                });
            }
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            return Err(QmpError::Closed {
                path: self.path.clone(),
                what: what.to_string(),
            });
        }
        if !line.ends_with('\n') {
            return Err(self.protocol(format!(
                "the answer to {what} is longer than {MAX_LINE_BYTES} bytes or cut short"
            )));
        }
        serde_json::from_str(&line)
            .map_err(|e| self.protocol(format!("the answer to {what} is not JSON: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt as _;
    use tokio::net::UnixListener;

    use super::*;

    /// A fake QMP server on a temp socket: sends `greeting`, then for each request line
    /// replies with the next line of `replies` (`{id}` is replaced by the request's id).
    async fn fake_server(
        dir: &tempfile::TempDir,
        greeting: &'static str,
        replies: Vec<&'static str>,
    ) -> PathBuf {
        let path = dir.path().join("fake.qmp");
        let listener = UnixListener::bind(&path).expect("bind");
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            if !greeting.is_empty() {
                write.write_all(greeting.as_bytes()).await.expect("greet");
            }
            for reply in replies {
                let Ok(Some(request)) = lines.next_line().await else {
                    return;
                };
                let request: Value = serde_json::from_str(&request).expect("request is JSON");
                let id = request["id"]
                    .as_u64()
                    .map_or("null".into(), |i| i.to_string());
                write
                    .write_all(reply.replace("{id}", &id).as_bytes())
                    .await
                    .expect("reply");
            }
            // Keep the connection open until the client goes.
            while let Ok(Some(_)) = lines.next_line().await {}
        });
        path
    }

    const GREETING: &str = "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 2, \"minor\": 0, \"major\": 10}, \"package\": \"\"}, \"capabilities\": [\"oob\"]}}\n";

    #[tokio::test]
    async fn negotiates_skips_events_and_matches_ids() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = fake_server(
            &dir,
            GREETING,
            vec![
                "{\"return\": {}, \"id\": {id}}\n",
                "{\"event\": \"RESUME\", \"timestamp\": {}}\n{\"return\": {\"name\": \"vm1\"}, \"id\": {id}}\n",
                "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"nope\"}, \"id\": {id}}\n",
            ],
        )
        .await;
        let mut client = QmpClient::connect(&path, Duration::from_secs(2))
            .await
            .expect("connects");
        assert_eq!(
            client.version(),
            Some(QemuVersion {
                major: 10,
                minor: 0,
                micro: 2
            })
        );
        assert_eq!(client.peer_pid(), Some(std::process::id() as i32));
        let name = client.execute("query-name", None).await.expect("answer");
        assert_eq!(name["name"], "vm1");
        assert_eq!(client.events_skipped(), 1);
        let err = client.execute("query-nothing", None).await.unwrap_err();
        assert_eq!(err.class(), Some("CommandNotFound"));
        assert!(err.connection_usable());
        assert!(
            err.to_string().contains("fake.qmp: query-nothing failed"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_silent_server_times_out_naming_the_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = fake_server(&dir, "", vec![]).await;
        let err = QmpClient::connect(&path, Duration::from_millis(200))
            .await
            .unwrap_err();
        let text = err.chain();
        assert!(matches!(err, QmpError::Timeout { .. }), "{text}");
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("another client"), "{text}");
    }

    #[tokio::test]
    async fn a_missing_socket_is_a_connect_error_naming_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("absent.qmp");
        let err = QmpClient::connect(&path, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, QmpError::Connect { .. }));
        let text = err.chain();
        assert!(text.starts_with(&path.display().to_string()), "{text}");
        assert!(text.contains("No such file"), "{text}");
    }

    #[tokio::test]
    async fn not_qmp_is_a_protocol_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = fake_server(&dir, "HTTP/1.1 400 Bad Request\n", vec![]).await;
        let err = QmpClient::connect(&path, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, QmpError::Protocol { .. }), "{}", err.chain());
    }
}

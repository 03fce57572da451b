//! `fleetmind vmm`: one built-in VMM host process. It owns a [`VmmControl`], optionally
//! creates the demo fleet on it, and serves the control API on a Unix socket until SIGTERM,
//! SIGINT or (with `--exit-with-stdin`) the end of its standard input.

use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use fleetmind_vmm_probe::KvmStatus;
use fleetmind_vmm_probe::control::VmmControl;
use fleetmind_vmm_probe::control::demo::{DemoConfig, DemoDriver};
use tokio::io::AsyncReadExt as _;
use tokio::net::UnixListener;

use crate::cli::{SocketDirArgs, VmmArgs};
use crate::config::Config;

/// The socket directory the daemon and `fleetmind vm` agree on.
///
/// # Errors
///
/// A config error naming the file and key.
pub fn socket_dir(args: &SocketDirArgs) -> anyhow::Result<PathBuf> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(dir) = &args.data_dir {
        config.data_dir = Some(dir.clone());
    }
    Ok(config.vmm_socket_dir())
}

/// The socket of host `name` in `dir`.
pub fn host_socket(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.sock"))
}

/// Host names become file names: the same rule as VM names.
fn check_host_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    anyhow::ensure!(
        ok,
        "--name must be 1 to 64 letters, digits, '.', '_' or '-', not starting with '.' (got {name:?})"
    );
    Ok(())
}

/// Binds the control socket: creates its directory (mode 0700), refuses to take over a socket
/// another live process serves, replaces a stale one, and makes the socket mode 0600.
async fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create the socket directory {}", dir.display()))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        anyhow::ensure!(
            meta.file_type().is_socket(),
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        );
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            anyhow::bail!(
                "another VMM host is serving {}; stop it or choose another --name",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {} to its owner", path.display()))?;
    Ok(listener)
}

/// Resolves when the process should stop: a signal, or stdin's end when asked.
async fn stop_requested(exit_with_stdin: bool) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let stdin_closed = async {
        if !exit_with_stdin {
            return std::future::pending::<()>().await;
        }
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        // Anything written is ignored; only the end matters.
        while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    };
    let why = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        () = stdin_closed => "standard input closed",
    };
    tracing::info!(reason = why, "VMM host shutting down");
    Ok(())
}

/// Runs one VMM host until asked to stop.
///
/// # Errors
///
/// A bad name, a socket that cannot be bound, or a config error.
pub async fn run(args: VmmArgs) -> anyhow::Result<()> {
    check_host_name(&args.name)?;
    let socket = match &args.socket {
        Some(path) => path.clone(),
        None => host_socket(&socket_dir(&args.dirs)?, &args.name),
    };
    let name = args.name.clone();
    let control = Arc::new(
        tokio::task::spawn_blocking(move || VmmControl::new(name))
            .await
            .context("VMM start task failed")?,
    );
    let listener = bind(&socket).await?;

    let driver = match (args.demo, control.hypervisor()) {
        (false, _) => None,
        (true, KvmStatus::Absent { reason }) => {
            tracing::warn!(%reason, "demo fleet not started: no usable KVM");
            None
        }
        (true, KvmStatus::Available { .. }) => {
            let control = Arc::clone(&control);
            let config = DemoConfig {
                host_index: args.demo_index,
                vms: args.demo_vms,
                day_length: args.day_length,
                start_hour: 8.0,
            };
            Some(
                tokio::task::spawn_blocking(move || DemoDriver::start(control, config))
                    .await
                    .context("demo start task failed")?
                    .context("cannot start the demo driver")?,
            )
        }
    };

    tracing::info!(host = %args.name, socket = %socket.display(), "VMM control API listening");
    println!(
        "fleetmind vmm: control API on unix:{} (host {})",
        socket.display(),
        args.name
    );
    let served = axum::serve(
        listener,
        fleetmind_dashboards::vmm_app(Arc::clone(&control)),
    )
    .with_graceful_shutdown(async move {
        if let Err(e) = stop_requested(args.exit_with_stdin).await {
            tracing::error!(error = %e, "no signal handling; stopping");
        }
    })
    .await;

    // Stop the driver before the VMs it drives, then every VM, then the socket.
    drop(driver);
    let stopper = Arc::clone(&control);
    tokio::task::spawn_blocking(move || stopper.delete_all())
        .await
        .context("stopping the VMs failed")?;
    if let Err(e) = std::fs::remove_file(&socket) {
        tracing::warn!(socket = %socket.display(), error = %e, "cannot remove the socket");
    }
    served.context("control API server failed")?;
    tracing::info!(host = %args.name, "VMM host stopped");
    Ok(())
}

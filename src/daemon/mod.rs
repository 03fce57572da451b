//! The daemon roles: which components run in this process and how they are wired.
//!
//! * `server`: event log, engine, API and dashboard; records arrive on `POST /api/v1/ingest`.
//! * `agent`: host collector sending records to a server, and the action API for this host.
//! * `run`: both in one process; the collector appends straight into the local event log.

mod agent;
mod analytics;
mod compaction;
mod kafka;
mod pipeline;
mod vmm_hosts;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use fleetmind_collector::{HostCollector, HostCollectorConfig};
use fleetmind_dashboards::ApiState;
use fleetmind_engine::{QueryLimits, Store, StoreConfig};
use fleetmind_stream::{EventLog, EventSink, EventSource, FsyncPolicy, LogConfig, RetentionPolicy};
use fleetmind_vmm_probe::KvmStatus;
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::cli::DaemonArgs;
use crate::config::{Config, FsyncMode, StreamKind};

/// Which role this process plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Agent and server.
    Run,
    /// Agent only.
    Agent,
    /// Server only.
    Server,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Run => "run",
            Role::Agent => "agent",
            Role::Server => "server",
        }
    }
}

/// Loads the config file (or the defaults) and applies the flags.
///
/// # Errors
///
/// A config error naming the file and key.
pub fn load_config(args: &DaemonArgs) -> anyhow::Result<Config> {
    let (mut config, origin) = match &args.config {
        Some(path) => (Config::load(path)?, path.clone()),
        None => (Config::default(), "<defaults>".into()),
    };
    if let Some(dir) = &args.data_dir {
        config.data_dir = Some(dir.clone());
    }
    if let Some(listen) = args.listen {
        config.api.listen = listen;
    }
    if let Some(interval) = args.collect_interval {
        config.collector.interval = interval;
    }
    // Flags can make a valid file invalid (e.g. a non-loopback --listen without tokens).
    config.validate(&origin)?;
    Ok(config)
}

/// Runs `role` until SIGINT or SIGTERM.
///
/// # Errors
///
/// Start-up failures: config, data directory, event log, binding the listen address.
pub async fn run(role: Role, args: DaemonArgs) -> anyhow::Result<()> {
    let config = load_config(&args)?;
    let shutdown = shutdown_on_signal()?;
    let kvm = fleetmind_vmm_probe::detect_kvm(&config.collector.sys_root, Path::new("/dev/kvm"));
    match &kvm {
        KvmStatus::Available { flavour } => tracing::info!(?flavour, "KVM available"),
        KvmStatus::Absent { reason } => {
            tracing::warn!(
                %reason,
                "no usable KVM: the hypervisor is reported absent and no VMs run on this host"
            );
        }
    }
    match role {
        Role::Agent => agent::run_agent(config, kvm, shutdown).await,
        Role::Run | Role::Server => {
            let demo = role == Role::Run && config.vmm.demo && !args.no_demo;
            run_server(role, config, kvm, shutdown, !args.no_collect, demo).await
        }
    }
}

fn shutdown_on_signal() -> anyhow::Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
        let _ = tx.send(true);
    });
    Ok(rx)
}

fn log_config(config: &Config) -> LogConfig {
    LogConfig {
        segment_bytes: config.stream.segment_bytes,
        fsync: match config.stream.fsync {
            FsyncMode::Always => FsyncPolicy::Always,
            FsyncMode::Interval => FsyncPolicy::Interval(config.stream.fsync_interval),
            FsyncMode::Never => FsyncPolicy::Never,
        },
        retention: RetentionPolicy {
            max_bytes: Some(config.stream.retention_bytes),
            max_age: Some(config.stream.retention_age),
        },
    }
}

/// The host collector's settings, with the kernel hostname as the default name.
pub(crate) fn host_collector(config: &Config) -> HostCollector {
    let host = config
        .collector
        .host_name
        .clone()
        .unwrap_or_else(|| fleetmind_collector::hostname(&config.collector.proc_root));
    HostCollector::new(HostCollectorConfig {
        host,
        proc_root: config.collector.proc_root.clone(),
        sys_root: config.collector.sys_root.clone(),
    })
}

/// Starts the collectors of this host: the host collector (when `collect_host`) and, when
/// `collector.vm_builtin` is on, the VM collector over the built-in VMM hosts' sockets. Their
/// records arrive on the returned channel; the tasks end on shutdown.
pub(crate) fn spawn_collectors(
    config: &Config,
    shutdown: &watch::Receiver<bool>,
    collect_host: bool,
) -> (
    mpsc::Receiver<fleetmind_schema::Record>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let (records, rx) = mpsc::channel(1024);
    let mut tasks = Vec::new();
    let collector = host_collector(config);
    let host = collector.config().host.clone();
    if collect_host {
        let (tx, mut samples) = mpsc::channel(64);
        let run = fleetmind_collector::run_host_collector(
            collector,
            config.collector.interval,
            tx,
            shutdown.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _ = run.await;
        }));
        let records = records.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(sample) = samples.recv().await {
                if records
                    .send(fleetmind_schema::Record::HostSample(sample))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }));
    }
    if config.collector.vm_builtin
        || !config.collector.qmp_sockets.is_empty()
        || config.collector.libvirt_run_dir.is_some()
    {
        let vm_config = fleetmind_collector::vm::VmCollectorConfig {
            host,
            interval: config.collector.vm_interval,
            timeout: config.collector.vm_interval.max(Duration::from_secs(2)),
            rescan: Duration::from_secs(5),
            builtin_dir: config.collector.vm_builtin.then(|| config.vmm_socket_dir()),
            debugfs_kvm_dir: Some(config.collector.debugfs_root.join("kvm")),
            proc_root: config.collector.proc_root.clone(),
            qmp_sockets: config.collector.qmp_sockets.clone(),
            libvirt_run_dir: config.collector.libvirt_run_dir.clone(),
            qmp_guest_stats_interval_s: Some(config.collector.qmp_guest_stats_interval.as_secs())
                .filter(|s| *s > 0)
                .map(|s| u32::try_from(s).unwrap_or(u32::MAX)),
        };
        tasks.push(tokio::spawn(fleetmind_collector::vm::run_vm_collector(
            vm_config,
            records,
            shutdown.clone(),
        )));
    }
    (rx, tasks)
}

async fn run_server(
    role: Role,
    config: Config,
    kvm: KvmStatus,
    shutdown: watch::Receiver<bool>,
    collect: bool,
    demo: bool,
) -> anyhow::Result<()> {
    let data_dir = config.data_dir();
    let events_dir = data_dir.join("events");
    std::fs::create_dir_all(&events_dir)
        .with_context(|| format!("cannot create the data directory {}", events_dir.display()))?;
    let log_cfg = log_config(&config);
    let log = tokio::task::spawn_blocking(move || EventLog::open(&events_dir, log_cfg))
        .await
        .context("event log open task failed")??;
    tracing::info!(dir = %data_dir.display(), end_offset = %log.end_offset(), "event log open");

    let store = Arc::new(Store::new(StoreConfig {
        memory_window: config.engine.memory_window,
        ..StoreConfig::default()
    }));
    let progress = Arc::new(pipeline::IngestProgress::default());
    // The latest version of every incident and its recommendations, for the API; fed by the
    // engine consumer like the store.
    let feed = Arc::new(fleetmind_engine::IncidentFeed::default());
    let sink: Arc<dyn EventSink> = Arc::new(log.clone());
    let source: Arc<dyn EventSource> = Arc::new(log.clone());

    let mut tasks = tokio::task::JoinSet::new();
    // The engine reads the embedded log, or, with Kafka, the broker (the log is then the spill
    // that the shipper empties into the broker).
    let kafka = match (config.stream.kind, &config.stream.kafka) {
        (StreamKind::Kafka, Some(kafka)) => Some(kafka::start_kafka(
            kafka.clone(),
            &data_dir,
            source.clone(),
            store.clone(),
            feed.clone(),
            progress.clone(),
            &shutdown,
        )?),
        _ => None,
    };
    let consumer = match &kafka {
        Some(k) => k.consumer_handle(),
        None => tokio::spawn(pipeline::consume_into_engine(
            source.clone(),
            store.clone(),
            feed.clone(),
            progress.clone(),
            shutdown.clone(),
        )),
    };
    let kafka_status = kafka.as_ref().map(kafka::KafkaPipeline::status_fn);

    // Collectors -> log (the all-in-one role, or a server asked to watch its own host).
    let mut collector_handles = Vec::new();
    if collect {
        let (rx, handles) = spawn_collectors(&config, &shutdown, true);
        collector_handles = handles;
        tasks.spawn(pipeline::append_samples(rx, sink.clone()));
    }

    // Housekeeping: retention of the log and of the engine's memory window.
    {
        let log = log.clone();
        let store = store.clone();
        let mut shutdown = shutdown.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = shutdown.wait_for(|s| *s) => break,
                    _ = tick.tick() => {}
                }
                let log = log.clone();
                match tokio::task::spawn_blocking(move || log.enforce_retention()).await {
                    Ok(Err(e)) => tracing::error!(error = %e, "event log retention failed"),
                    Err(e) => tracing::error!(error = %e, "event log retention task failed"),
                    Ok(Ok(_)) => {}
                }
                if let Err(e) = store.enforce_window(fleetmind_schema::now_ms()) {
                    tracing::error!(error = %e, "engine memory window enforcement failed");
                }
            }
        });
    }
    // Anomaly detection and correlation over the local log; what they find goes back into it.
    let analytics_progress = Arc::new(analytics::AnalyticsProgress::default());
    if config.analytics.enabled {
        tasks.spawn(analytics::run_analytics(
            config.analytics.engine_config(),
            data_dir.join("analytics").join("state.json"),
            source.clone(),
            sink.clone(),
            analytics_progress.clone(),
            shutdown.clone(),
        ));
    } else {
        analytics_progress.turned_off("turned off (analytics.enabled = false)");
    }

    // The Parquet tier: older records compacted from the log, queried together with memory.
    let compaction_status = Arc::new(compaction::CompactionStatus::default());
    let compaction = compaction::start(
        &config,
        &data_dir,
        log.clone(),
        store.clone(),
        compaction_status.clone(),
        &shutdown,
    )
    .await?;
    tasks.spawn(compaction);

    // The demo fleet's VMM hosts (all-in-one role only).
    let vmm_hosts = match (&kvm, demo) {
        (KvmStatus::Available { .. }, true) => {
            Some(vmm_hosts::VmmHosts::start(&config, &shutdown)?)
        }
        // Already reported once, at start.
        (KvmStatus::Absent { .. }, true) | (_, false) => None,
    };
    let vmm_status: Box<dyn Fn() -> serde_json::Value + Send + Sync> = match (&vmm_hosts, &kvm) {
        (Some(hosts), _) => Box::new(hosts.status_fn()),
        (None, KvmStatus::Absent { reason }) if demo => {
            let off = json!({"demo": false, "reason": format!("no usable KVM: {reason}")});
            Box::new(move || off.clone())
        }
        (None, _) => {
            let off = json!({"demo": false, "reason": "turned off (vmm.demo = false, --no-demo, or not the run role)"});
            Box::new(move || off.clone())
        }
    };

    let status = {
        let source = source.clone();
        let progress = progress.clone();
        let analytics_progress = analytics_progress.clone();
        let compaction_status = compaction_status.clone();
        let kvm = serde_json::to_value(&kvm).unwrap_or_default();
        let started = std::time::Instant::now();
        Arc::new(move || {
            let stopped = progress.stopped_reason();
            let stream = match &kafka_status {
                Some(kafka) => kafka(source.end_offset().0),
                None => json!({"kind": "embedded", "end_offset": source.end_offset().0}),
            };
            let mut status = json!({
                "role": role.name(),
                "uptime_s": started.elapsed().as_secs(),
                "hypervisor": kvm,
                "stream": stream,
                "engine": {
                    "next_offset": progress.next_offset.load(Ordering::Acquire),
                    "rejected": progress.rejected.load(Ordering::Relaxed),
                    "ingest_stopped": stopped,
                },
                "vmm": vmm_status(),
                "analytics": analytics_progress.to_json(),
                "compaction": compaction_status.to_json(),
            });
            if stopped.is_some() {
                status["status"] = json!("degraded");
            }
            status
        })
    };
    let state = ApiState {
        store: store.clone(),
        ingest: sink.clone(),
        query_limits: QueryLimits {
            max_rows: config.engine.query_max_rows,
            timeout: config.engine.query_timeout,
            ..QueryLimits::default()
        },
        agent_tokens: config.server.agent_tokens.clone().into(),
        max_body_bytes: config.api.max_body_bytes,
        status,
        feed: feed.clone(),
    };
    let listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .with_context(|| format!("cannot listen on {} (api.listen)", config.api.listen))?;
    let addr = listener.local_addr().context("listener has no address")?;
    tracing::info!(%addr, role = role.name(), "API and dashboard listening");
    // One line on stdout for people and scripts: where to point the browser.
    println!(
        "fleetmind {}: API and dashboard on http://{addr}/",
        role.name()
    );

    let mut api_shutdown = shutdown.clone();
    axum::serve(listener, fleetmind_dashboards::app(state))
        .with_graceful_shutdown(async move {
            let _ = api_shutdown.wait_for(|s| *s).await;
        })
        .await
        .context("API server failed")?;

    // Stop producers first, then let the appender drain, then flush the log to disk.
    if let Some(hosts) = vmm_hosts {
        hosts.join().await;
    }
    for handle in collector_handles {
        let _ = handle.await;
    }
    while tasks.join_next().await.is_some() {}
    let _ = consumer.await;
    sink.flush()
        .await
        .context("cannot flush the event log on shutdown")?;
    tracing::info!(end_offset = %source.end_offset(), "event log flushed; bye");
    Ok(())
}

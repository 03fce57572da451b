//! The agent role: collect on this host, send records up to the server, take actions down.
//!
//! Records go up through the server's `POST /api/v1/ingest` (which appends them to the
//! server's event stream); a batch is dropped from the agent's buffer only once the server has
//! acknowledged it. While the server is unreachable the agent retries with exponential backoff
//! and holds at most `agent.max_buffered_records` records, dropping the oldest beyond that.
//! Actions come down through the agent's own small API, which needs `agent.action_token`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use fleetmind_dashboards::{AgentApiState, agent_app};
use fleetmind_remediation::ExecutorRegistry;
use fleetmind_schema::{Envelope, Record};
use fleetmind_vmm_probe::KvmStatus;
use reqwest::StatusCode;
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::config::Config;

/// Most records posted in one request.
const POST_BATCH: usize = 500;

pub(super) async fn run_agent(
    config: Config,
    kvm: KvmStatus,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (rx, collector_tasks) = super::spawn_collectors(&config, &shutdown, true);
    let forwarder = tokio::spawn(forward(
        rx,
        config.agent.server_url.clone(),
        config.agent.server_token.clone(),
        config.agent.max_buffered_records,
        shutdown.clone(),
    ));

    let kvm = serde_json::to_value(&kvm).unwrap_or_default();
    let state = AgentApiState {
        registry: Arc::new(ExecutorRegistry::new(Duration::from_secs(120))),
        action_token: config.agent.action_token.clone().map(Arc::from),
        status: Arc::new(move || json!({ "hypervisor": kvm })),
    };
    if state.action_token.is_none() {
        tracing::warn!("agent.action_token is not set: the action API refuses every action");
    }
    let listener = tokio::net::TcpListener::bind(config.agent.listen)
        .await
        .with_context(|| format!("cannot listen on {} (agent.listen)", config.agent.listen))?;
    let addr = listener.local_addr().context("listener has no address")?;
    println!(
        "fleetmind agent: action API on http://{addr}/, sending to {}",
        config.agent.server_url
    );
    let mut api_shutdown = shutdown.clone();
    axum::serve(listener, agent_app(state))
        .with_graceful_shutdown(async move {
            let _ = api_shutdown.wait_for(|s| *s).await;
        })
        .await
        .context("agent action API failed")?;
    for task in collector_tasks {
        let _ = task.await;
    }
    let _ = forwarder.await;
    Ok(())
}

/// Sends samples to the server until shutdown, then makes one last attempt to send what is
/// buffered.
async fn forward(
    mut samples: mpsc::Receiver<Record>,
    server_url: String,
    token: Option<String>,
    max_buffered: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    let url = format!("{}/api/v1/ingest", server_url.trim_end_matches('/'));
    let mut buffer: VecDeque<Envelope> = VecDeque::new();
    let mut dropped: u64 = 0;
    let mut backoff = Duration::from_millis(250);
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            sample = samples.recv() => match sample {
                Some(sample) => {
                    buffer.push_back(Envelope::new(sample));
                    while buffer.len() > max_buffered {
                        buffer.pop_front();
                        dropped += 1;
                        if dropped.is_power_of_two() {
                            tracing::warn!(dropped, "agent buffer full: dropping the oldest records");
                        }
                    }
                }
                None => break,
            },
            () = retry => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
        if retry_at.is_some_and(|at| tokio::time::Instant::now() < at) {
            continue;
        }
        match send_all(&client, &url, token.as_deref(), &mut buffer).await {
            Ok(()) => {
                backoff = Duration::from_millis(250);
                retry_at = None;
            }
            Err(e) => {
                tracing::warn!(error = %e, buffered = buffer.len(), retry_in = ?backoff, "cannot reach the server");
                retry_at = Some(tokio::time::Instant::now() + backoff);
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
    if let Err(e) = send_all(&client, &url, token.as_deref(), &mut buffer).await {
        tracing::error!(error = %e, lost = buffer.len(), "records not delivered at shutdown");
    }
}

async fn send_all(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    buffer: &mut VecDeque<Envelope>,
) -> anyhow::Result<()> {
    while !buffer.is_empty() {
        let n = buffer.len().min(POST_BATCH);
        let batch: Vec<&Envelope> = buffer.iter().take(n).collect();
        let mut request = client.post(url).json(&batch);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.context("request failed")?;
        let status = response.status();
        if status.is_success() {
            buffer.drain(..n);
        } else if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS {
            // The server will never take this batch as it is: keep the agent moving.
            let body = response.text().await.unwrap_or_default();
            tracing::error!(%status, %body, records = n, "server refused a batch; dropping it");
            buffer.drain(..n);
        } else {
            anyhow::bail!("server answered {status}");
        }
    }
    Ok(())
}

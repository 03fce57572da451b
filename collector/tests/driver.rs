//! The async driver over a recorded tree: samples arrive on the channel, and it stops when
//! the receiver goes away or shutdown is signalled.

mod common;

use std::time::Duration;

use common::Replay;
use fleetmind_collector::{CollectorExit, run_host_collector};
use tokio::sync::{mpsc, watch};

#[tokio::test]
async fn sends_samples_until_the_receiver_is_dropped() {
    let replay = Replay::new("two-node-numa");
    replay.load("t1");
    let (tx, mut rx) = mpsc::channel(1);
    let (_stop, shutdown) = watch::channel(false);
    let task = tokio::spawn(run_host_collector(
        replay.collector("kvm-host-07"),
        Duration::from_millis(5),
        tx,
        shutdown,
    ));
    for _ in 0..2 {
        let sample = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a sample within 5 s")
            .expect("channel open");
        assert_eq!(sample.host, "kvm-host-07");
        assert_eq!(sample.cpus, 8);
        assert_eq!(sample.numa.len(), 2);
    }
    drop(rx);
    let exit = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops promptly")
        .expect("no panic");
    assert_eq!(exit, CollectorExit::SinkClosed);
}

#[tokio::test]
async fn shutdown_interrupts_a_send_blocked_on_a_full_channel() {
    let replay = Replay::new("two-node-numa");
    replay.load("t1");
    let (tx, _rx) = mpsc::channel(1);
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn(run_host_collector(
        replay.collector("h"),
        Duration::from_millis(1),
        tx,
        shutdown,
    ));
    // Nobody reads: after one queued sample the driver waits on a full channel.
    tokio::time::sleep(Duration::from_millis(30)).await;
    stop.send(true).expect("task listens");
    let exit = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops promptly")
        .expect("no panic");
    assert_eq!(exit, CollectorExit::Shutdown);
}

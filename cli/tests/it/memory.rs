//! Backpressure through a pipeline whose last stage is slow: real agent
//! processes, stages streaming agent to agent, 64 KiB items, and every
//! agent's peak RSS stays bounded.
//!
//! CI feeds 4,000 items (256 MiB of data, more than the bound, so a queue
//! that grew with the input would fail); `SKELPI_MEMORY_ITEMS=100000` runs
//! the full acceptance figure.

use super::agents::start_agent;
use skelpi::cluster::Cluster;
use skelpi_proto::Array;
use skelpi_proto::skeleton::{Kernel, Skeleton};
use skelpi_testkit::AgentProcess;
use skelpi_wire::handshake::ConnectOptions;
use skelpi_wire::key::ClusterKey;

const LIMIT: u64 = 256 << 20;

#[test]
fn a_pipeline_with_a_slow_last_stage_keeps_every_agent_under_256_mib() {
    let items: usize = std::env::var("SKELPI_MEMORY_ITEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4_000);
    let dir = super::support::Scratch::new("memory");
    let key_path = dir.0.join("cluster.key");
    let key = ClusterKey::generate().unwrap();
    key.write(&key_path, false).unwrap();
    let extra = ["--no-mdns", "--allow-plaintext", "--workers", "1"];
    let agents: Vec<AgentProcess> = (0..3)
        .map(|i| start_agent(&key_path, &format!("mem-{i}"), &extra))
        .collect();
    let addrs: Vec<_> = agents.iter().map(|a| a.addr).collect();
    let tree = Skeleton::pipe([
        Skeleton::seq(Kernel::new("identity", [])),
        Skeleton::seq(Kernel::new("scale", [1.0])),
        Skeleton::seq(Kernel::new("sleep_ms", [0.2])),
    ]);
    let floats = 64 * 1024 / 8;
    let (count, sum) = smol::block_on(async {
        let opts = ConnectOptions {
            plaintext: true,
            ..Default::default()
        };
        let mut cluster = Cluster::connect(&addrs, &key, &opts).await.unwrap();
        // Generated lazily: the master holds only what is in flight.
        let inputs = (0..items).map(|i| Array::list(vec![i as f64; floats]));
        let (mut count, mut sum) = (0usize, 0.0f64);
        cluster
            .run_each(&tree, inputs, |index, a| {
                assert_eq!(index as usize, count, "results in input order");
                assert_eq!(a.data.len(), floats);
                count += 1;
                sum += a.data[0];
            })
            .await
            .unwrap();
        cluster.close().await;
        (count, sum)
    });
    assert_eq!(count, items);
    assert_eq!(sum, (0..items).map(|i| i as f64).sum::<f64>());
    for agent in &agents {
        let peak = agent.peak_rss().unwrap();
        eprintln!(
            "{}: peak RSS {:.1} MiB",
            agent.id,
            peak as f64 / (1 << 20) as f64
        );
        assert!(peak < LIMIT, "{} peaked at {peak} bytes", agent.id);
    }
}

//! The aarch64 agent (static musl build, as for the boards) run under
//! `qemu-aarch64-static`, in one pool with a native agent: skeletons give
//! exactly the sequential reference's results, so nothing in the wire
//! format depends on the architecture (word size, byte order).
//! mDNS does not work under qemu-user, so the agents are named by address.

use rand::{Rng, SeedableRng, rngs::StdRng};
use skelpi::cluster::Cluster;
use skelpi::runtime::sequential;
use skelpi_agent::kernels::{Array, Registry};
use skelpi_agent::key::ClusterKey;
use skelpi_agent::local::{LocalAgent, LocalOptions};
use skelpi_agent::process::AgentProcess;
use skelpi_proto::skeleton::Skeleton;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const TARGET: &str = "aarch64-unknown-linux-musl";

/// The aarch64 agent of this workspace (built by scripts/test.sh; built
/// here if missing).
pub fn arm_agent() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target_dir = exe.ancestors().nth(3).unwrap().to_owned();
    let bin = target_dir.join(TARGET).join("debug").join("skelpi-agent");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--target",
                TARGET,
                "-p",
                "skelpi-agent",
                "--bin",
                "skelpi-agent",
            ])
            .status()
            .unwrap();
        assert!(status.success(), "building the {TARGET} agent failed");
    }
    bin
}

#[test]
fn an_aarch64_agent_under_qemu_and_a_native_one_compute_the_same_as_the_reference() {
    let dir = super::support::Scratch::new("cross");
    let key = ClusterKey::generate().unwrap();
    let key_path = dir.0.join("cluster.key");
    key.write(&key_path, false).unwrap();
    let arm = arm_agent();
    let arm_agent = AgentProcess::start(
        std::path::Path::new("qemu-aarch64-static"),
        &[
            arm.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--no-mdns",
            "--name",
            "arm",
            "--workers",
            "1",
            "--key-file",
            key_path.to_str().unwrap(),
        ],
        Duration::from_secs(60),
    )
    .expect("the aarch64 agent starts under qemu-aarch64-static (Debian qemu-user-static)");
    let native = LocalAgent::start("native", key.clone(), LocalOptions::default()).unwrap();
    let reg = Registry::builtin();
    let mut rng = StdRng::seed_from_u64(64);
    smol::block_on(async {
        let addrs = [arm_agent.addr, native.addr()];
        let mut cluster = Cluster::connect(&addrs, &key, &Default::default())
            .await
            .unwrap();
        assert_eq!(cluster.agents()[0].info().arch, "aarch64");
        for text in [
            "map(6, seq(erf_burn(3)))",
            "pipe(seq(square), seq(scale(-0.5)), seq(erf_burn(2)))",
            "pipe(farm(seq(matmul_power(2, 8))), reduce(sum))",
        ] {
            let tree: Skeleton = text.parse().unwrap();
            let inputs: Vec<Array> = (0..12)
                .map(|_| Array::list((0..64).map(|_| rng.random_range(-4.0..4.0)).collect()))
                .collect();
            let want = sequential::run(&reg, &tree, inputs.clone()).unwrap();
            let got = cluster.run(&tree, inputs).await.unwrap();
            assert_eq!(got, want, "{text}");
        }
        cluster.close().await;
    });
}

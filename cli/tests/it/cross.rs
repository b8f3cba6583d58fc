//! The boards' agents — aarch64 (static musl) and armv7 (glibc, Debian's
//! cross gcc) — run under qemu-user (`qemu-aarch64-static`,
//! `qemu-arm-static`), each in one pool with a native agent: skeletons give
//! exactly the sequential reference's results, so nothing in the wire
//! format depends on the architecture (word size, byte order).
//! mDNS does not work under qemu-user, so the agents are named by address.

use rand::{Rng, SeedableRng, rngs::StdRng};
use skelpi::cluster::Cluster;
use skelpi::runtime::sequential;
use skelpi_agent::kernels::Registry;
use skelpi_agent::local::{LocalAgent, LocalOptions};
use skelpi_proto::Array;
use skelpi_proto::skeleton::Skeleton;
use skelpi_testkit::AgentProcess;
use skelpi_wire::key::ClusterKey;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The aarch64 target (64-bit boards: Pi 3, 4, 5, Zero 2).
const AARCH64: &str = "aarch64-unknown-linux-musl";
/// The armv7 target (32-bit Raspberry Pi OS on Pi 2, 3, 4).
const ARMV7: &str = "armv7-unknown-linux-gnueabihf";

/// The aarch64 agent of this workspace (built by scripts/test.sh; built
/// here if missing).
pub fn arm_agent() -> PathBuf {
    board_agent(AARCH64)
}

/// The agent of this workspace built for `target` (scripts/test.sh builds
/// both board targets; built here if missing).
fn board_agent(target: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target_dir = exe.ancestors().nth(3).unwrap().to_owned();
    let bin = target_dir.join(target).join("debug").join("skelpi-agent");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--target",
                target,
                "-p",
                "skelpi-agent",
                "--bin",
                "skelpi-agent",
            ])
            .status()
            .unwrap();
        assert!(status.success(), "building the {target} agent failed");
    }
    bin
}

#[test]
fn an_aarch64_agent_under_qemu_and_a_native_one_compute_the_same_as_the_reference() {
    same_as_reference(AARCH64, "qemu-aarch64-static", &[], "aarch64");
}

#[test]
fn an_armv7_agent_under_qemu_and_a_native_one_compute_the_same_as_the_reference() {
    // Dynamically linked: qemu finds the armhf loader and libc in Debian's
    // cross sysroot.
    same_as_reference(
        ARMV7,
        "qemu-arm-static",
        &["-L", "/usr/arm-linux-gnueabihf"],
        "arm",
    );
}

/// Runs the `target` agent under `qemu` beside a native agent, and checks
/// that it reports `arch` and that three skeletons match the reference.
fn same_as_reference(target: &str, qemu: &str, qemu_args: &[&str], arch: &str) {
    let dir = super::support::Scratch::new(&format!("cross-{arch}"));
    let key = ClusterKey::generate().unwrap();
    let key_path = dir.0.join("cluster.key");
    key.write(&key_path, false).unwrap();
    let bin = board_agent(target);
    let mut args: Vec<&str> = qemu_args.to_vec();
    args.extend([
        bin.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--no-mdns",
        "--name",
        "arm",
        "--workers",
        "1",
        "--key-file",
        key_path.to_str().unwrap(),
    ]);
    let arm_agent = AgentProcess::start(std::path::Path::new(qemu), &args, Duration::from_secs(60))
        .unwrap_or_else(|e| {
            panic!("the {target} agent starts under {qemu} (Debian qemu-user-static): {e}")
        });
    let native = LocalAgent::start("native", key.clone(), LocalOptions::default()).unwrap();
    let reg = Registry::builtin();
    let mut rng = StdRng::seed_from_u64(64);
    smol::block_on(async {
        let addrs = [arm_agent.addr, native.addr()];
        let mut cluster = Cluster::connect(&addrs, &key, &Default::default())
            .await
            .unwrap();
        assert_eq!(cluster.agents()[0].info().arch, arch);
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
        // A WebAssembly module pushed to both: the same bits on each.
        let pushed = cluster
            .push_module(&crate::locate::example_guest())
            .await
            .unwrap();
        assert_eq!(pushed.stored_on, ["arm", "native"]);
        let tree: Skeleton = format!("map(6, seq(wasm:{}:erf))", pushed.hash)
            .parse()
            .unwrap();
        let inputs: Vec<Array> = (0..12)
            .map(|_| Array::list((0..64).map(|_| rng.random_range(-4.0..4.0)).collect()))
            .collect();
        let want: Vec<Array> = inputs
            .iter()
            .map(|a| Array::list(a.data.iter().map(|&x| libm::erf(x)).collect()))
            .collect();
        assert_eq!(cluster.run(&tree, inputs).await.unwrap(), want, "wasm erf");
        cluster.close().await;
    });
}

//! The custom agent binary, run as a process on loopback: masters learn
//! its kernels from its handshake, run its own kernel, and refuse a job
//! naming a kernel no agent offers before sending anything.

use skelpi::cluster::Cluster;
use skelpi::runtime::JobError;
use skelpi_proto::Array;
use skelpi_testkit::AgentProcess;
use skelpi_wire::key::ClusterKey;
use std::path::Path;
use std::time::Duration;

#[test]
fn a_custom_agent_runs_its_own_kernel_and_unknown_kernels_are_refused() {
    let dir = std::env::temp_dir().join(format!("skelpi-custom-agent-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_path = dir.join("cluster.key");
    let key = ClusterKey::generate().unwrap();
    key.write(&key_path, true).unwrap();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--no-mdns",
        "--workers",
        "2",
        "--key-file",
        key_path.to_str().unwrap(),
    ];
    let binary = Path::new(env!("CARGO_BIN_EXE_custom-agent"));
    let agent = AgentProcess::start(binary, &args, Duration::from_secs(20)).unwrap();
    smol::block_on(async {
        let mut cluster = Cluster::connect(&[agent.addr], &key, &Default::default())
            .await
            .unwrap();
        let kernels = &cluster.agents()[0].info().kernels;
        assert!(kernels.iter().any(|k| k == "celsius"), "{kernels:?}");
        assert!(
            kernels.iter().any(|k| k == "square"),
            "built-ins too: {kernels:?}"
        );

        let tree = "farm(seq(celsius))".parse().unwrap();
        let out = cluster
            .run(&tree, [Array::list(vec![32.0, 212.0, -40.0])])
            .await
            .unwrap();
        assert_eq!(out[0].data, [0.0, 100.0, -40.0]);

        let tree = "pipe(seq(celsius), seq(kelvin))".parse().unwrap();
        let mut sent = 0;
        let inputs = (0..3).map(|_| {
            sent += 1;
            Array::list(vec![1.0])
        });
        let e = cluster.run(&tree, inputs).await.unwrap_err();
        assert!(matches!(e, JobError::NoKernel { .. }), "{e:?}");
        let e = e.to_string();
        assert!(
            e.contains("no agent of the pool offers kernel kelvin"),
            "{e}"
        );
        assert!(e.contains("celsius"), "says what it has: {e}");
        assert_eq!(sent, 0, "no input was even drawn");
        // The connection is still good.
        cluster
            .run(&tree_square(), [Array::list(vec![3.0])])
            .await
            .unwrap();
        cluster.close().await;
    });
    let _ = std::fs::remove_dir_all(&dir);
}

fn tree_square() -> skelpi_proto::skeleton::Skeleton {
    "seq(square)".parse().unwrap()
}

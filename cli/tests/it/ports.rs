//! Port kernels: external programs as farm workers and pipeline stages on
//! in-process agents, the shipped Python example and hostile programs
//! (crashing, hanging, writing garbage), and their processes' lifetimes.

use crate::support::Scratch;
use skelpi::cluster::Cluster;
use skelpi::runtime::JobError;
use skelpi_agent::kernels::Registry;
use skelpi_agent::local::LocalOptions;
use skelpi_proto::Array;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// A short timeout, so that the hanging program fails fast.
const TIMEOUT: Duration = Duration::from_secs(2);

/// A ports directory with the example and the hostile programs.
fn ports(dir: &Scratch) -> &Path {
    let put = |name: &str, text: &str| {
        let path = dir.0.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/ports/scale.py");
    put("scale.py", &std::fs::read_to_string(example).unwrap());
    put("crash.sh", "#!/bin/sh\nhead -c 4 >/dev/null\nexit 3\n");
    put("hang.sh", "#!/bin/sh\nexec sleep 600\n");
    put(
        "garbage.sh",
        "#!/bin/sh\nhead -c 4 >/dev/null\nprintf 'hello, world'\nexec sleep 600\n",
    );
    put(
        "text.sh",
        "#!/bin/sh\nhead -c 4 >/dev/null\n\
         printf '\\000\\000\\000\\011\\000\\000\\000\\000hello'\nexec sleep 600\n",
    );
    // A wrapper that does not exec: its child must die with it.
    put("wrapper.sh", "#!/bin/sh\nsleep 600\necho never\n");
    std::fs::write(dir.0.join("not-executable"), "").unwrap();
    &dir.0
}

async fn cluster(dir: &Path, agents: usize) -> Cluster {
    // A registry per agent: clones of one would share their ports'
    // processes, as no two real agents do.
    let opts: Vec<LocalOptions> = (0..agents)
        .map(|_| LocalOptions {
            kernels: Some(Registry::builtin().with_ports(dir, TIMEOUT).unwrap()),
            workers: 2,
            ..LocalOptions::default()
        })
        .collect();
    Cluster::local_with(&opts, &Default::default())
        .await
        .unwrap()
}

/// Processes whose command line names a file in `dir`.
fn running_from(dir: &Path) -> Vec<u32> {
    // The agent sets SKELPI_PORT to the program's path; children inherit it.
    let marker = format!("SKELPI_PORT={}/", dir.to_str().unwrap());
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&marker))
        })
        .collect()
}

/// Waits (at most 5 s) until no process runs from `dir`.
fn all_gone(dir: &Path) -> bool {
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        if running_from(dir).is_empty() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn inputs(n: usize) -> Vec<Array> {
    (0..n).map(|i| Array::list(vec![i as f64, 0.5])).collect()
}

#[test]
fn a_python_port_runs_as_farm_workers_and_as_a_streamed_stage() {
    let dir = Scratch::new("ports-example");
    let ports = ports(&dir);
    smol::block_on(async {
        let mut cluster = cluster(ports, 2).await;
        let offered = &cluster.agents()[0].info().kernels;
        assert!(offered.iter().any(|k| k == "port:scale.py"), "{offered:?}");
        assert!(
            !offered.iter().any(|k| k == "port:not-executable"),
            "{offered:?}"
        );

        let farm = "farm(seq(port:scale.py(3)))".parse().unwrap();
        let out = cluster.run(&farm, inputs(50)).await.unwrap();
        for (i, a) in out.iter().enumerate() {
            assert_eq!(a.data, [3.0 * i as f64, 1.5]);
        }
        // Started once per worker and reused: at most 2 agents × 2 workers.
        let farm_pids = running_from(ports);
        assert!(
            (1..=4).contains(&farm_pids.len()),
            "{farm_pids:?} for 50 tasks"
        );
        // The next job on those connections ends the farm's: its programs
        // are stopped, new ones serve the new job.
        cluster.run(&farm, inputs(50)).await.unwrap();
        let now = running_from(ports);
        assert!(
            farm_pids.iter().all(|p| !now.contains(p)),
            "{farm_pids:?} in {now:?}"
        );
        assert!(!now.is_empty());

        // A streamed pipeline's stage.
        let pipe = "pipe(seq(port:scale.py), seq(square))".parse().unwrap();
        let out = cluster.run(&pipe, inputs(20)).await.unwrap();
        for (i, a) in out.iter().enumerate() {
            assert_eq!(a.data, [(2.0 * i as f64).powi(2), 1.0]);
        }
        // The program's own error is a task error naming it.
        let bad = "seq(port:scale.py(1, 2))".parse().unwrap();
        let e = cluster.run(&bad, inputs(1)).await.unwrap_err().to_string();
        assert!(
            e.contains("port:scale.py: scale.py takes at most one argument"),
            "{e}"
        );
        cluster.close().await;
    });
    assert!(all_gone(ports), "left running: {:?}", running_from(ports));
}

#[test]
fn hostile_port_programs_fail_their_task_and_the_agent_keeps_serving() {
    let dir = Scratch::new("ports-hostile");
    let ports = ports(&dir);
    smol::block_on(async {
        let mut cluster = cluster(ports, 1).await;
        for (program, says) in [
            (
                "crash.sh",
                "the program exited (or closed its output) (exit status: 3)",
            ),
            ("hang.sh", "no answer within 2s: killed"),
            (
                "garbage.sh",
                "the program wrote a frame of 1751477356 bytes",
            ),
            (
                "text.sh",
                "the program answered 5 bytes after its status, not a whole number of 8-byte \
                 floats",
            ),
            ("wrapper.sh", "no answer within 2s: killed"),
        ] {
            let tree = format!("seq(port:{program})").parse().unwrap();
            let started = Instant::now();
            let e = cluster.run(&tree, inputs(1)).await.unwrap_err();
            assert!(matches!(e, JobError::Task(_)), "{program}: {e:?}");
            let e = e.to_string();
            assert!(
                e.contains(&format!("port:{program}: {says}")),
                "{program}: {e}"
            );
            assert!(
                started.elapsed() < TIMEOUT * 3,
                "{program}: took {:?}",
                started.elapsed()
            );
            // The agent still serves.
            let ok = "seq(port:scale.py)".parse().unwrap();
            assert_eq!(
                cluster.run(&ok, inputs(1)).await.unwrap()[0].data,
                [0.0, 1.0]
            );
        }
        // A program that does not read its input, sent 1 MB (more than a
        // pipe holds): the call still ends at the timeout.
        let deaf = "seq(port:hang.sh)".parse().unwrap();
        let started = Instant::now();
        let big = Array::list(vec![1.0; 131_072]);
        let e = cluster.run(&deaf, [big]).await.unwrap_err().to_string();
        assert!(
            e.contains("port:hang.sh: no answer within 2s: killed"),
            "{e}"
        );
        assert!(
            started.elapsed() < TIMEOUT * 3,
            "took {:?}",
            started.elapsed()
        );
        cluster.close().await;
    });
    assert!(all_gone(ports), "left running: {:?}", running_from(ports));
}

#[test]
fn an_agent_without_a_ports_directory_offers_no_port_and_refuses_the_job() {
    smol::block_on(async {
        let mut cluster = Cluster::local(1, &Default::default()).await.unwrap();
        let tree = "seq(port:scale.py)".parse().unwrap();
        let e = cluster.run(&tree, inputs(1)).await.unwrap_err().to_string();
        assert!(
            e.contains("no agent of the pool offers kernel port:scale.py"),
            "{e}"
        );
    });
}

#[test]
fn a_real_agent_stops_its_port_programs_when_the_master_goes_away() {
    let dir = Scratch::new("ports-master-gone");
    let ports = ports(&dir);
    let keys = Scratch::new("ports-master-gone-key");
    let key_path = keys.0.join("cluster.key");
    let key = skelpi_wire::key::ClusterKey::generate().unwrap();
    key.write(&key_path, false).unwrap();
    let agent = crate::agents::start_agent(
        &key_path,
        "ports-agent",
        &[
            "--no-mdns",
            "--workers",
            "2",
            "--ports",
            ports.to_str().unwrap(),
        ],
    );
    smol::block_on(async {
        let mut cluster = Cluster::connect(&[agent.addr], &key, &Default::default())
            .await
            .unwrap();
        let farm = "farm(seq(port:scale.py(3)))".parse().unwrap();
        let out = cluster.run(&farm, inputs(10)).await.unwrap();
        assert_eq!(out[9].data, [27.0, 1.5]);
        assert!(
            !running_from(ports).is_empty(),
            "kept for the job's next calls"
        );
        cluster.close().await;
    });
    assert!(all_gone(ports), "left running: {:?}", running_from(ports));
    drop(agent);
}

//! WebAssembly kernels: the example guest (Rust, built for wasm32) as farm
//! workers and as a streamed pipeline stage, pushed by the library and by
//! `skelpi module push` / a job file; and hostile modules — a wrong hash,
//! an endless loop, a memory bomb, a trap, modules that break the ABI —
//! each refused or failing its task while the agent keeps serving.

use crate::locate;
use crate::support::{Scratch, skelpi};
use skelpi::client::ClientError;
use skelpi::cluster::Cluster;
use skelpi::modules::PushError;
use skelpi::runtime::JobError;
use skelpi_agent::kernels::Registry;
use skelpi_agent::kernels::wasm::{Limits, Modules};
use skelpi_agent::local::LocalOptions;
use skelpi_proto::Array;
use std::time::{Duration, Instant};

/// A module in the guest ABI: `memory`, a bump `skelpi_alloc`, and `body`.
fn guest(body: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
            (memory (export "memory") 1)
            (global $top (mut i32) (i32.const 1024))
            (func (export "skelpi_alloc") (param $len i32) (result i32)
              (global.get $top)
              (global.set $top (i32.add (global.get $top)
                (i32.and (i32.add (local.get $len) (i32.const 7)) (i32.const -8)))))
            {body})"#
    ))
    .unwrap()
}

/// Kernels that misbehave, each `(args, nargs, data, n) -> i64`.
const HOSTILE: &str = r#"
    (func (export "spin") (param i32 i32 i32 i32) (result i64)
      (loop $forever (br $forever))
      (i64.const 0))
    (func (export "bomb") (param i32 i32 i32 i32) (result i64)
      (loop $more (br_if $more (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
      (i64.const 0))
    (func (export "trap") (param i32 i32 i32 i32) (result i64)
      unreachable)
    (func (export "recurse") (param i32 i32 i32 i32) (result i64)
      (call 4 (local.get 0) (local.get 1) (local.get 2) (local.get 3)))
    (func (export "wild") (param i32 i32 i32 i32) (result i64)
      (i64.const 0x7fff000000000010))"#;

fn inputs(n: usize) -> Vec<Array> {
    (0..n).map(|i| Array::list(vec![i as f64, -0.5])).collect()
}

fn hash_of(kernels: &[String]) -> &str {
    kernels[0].split(':').nth(1).unwrap()
}

#[test]
fn the_example_guest_runs_as_farm_workers_and_as_a_streamed_stage() {
    let module = locate::example_guest();
    smol::block_on(async {
        let mut cluster = Cluster::local(2, &Default::default()).await.unwrap();
        assert!(
            cluster.agents()[0]
                .info()
                .kernels
                .iter()
                .any(|k| k == "wasm:*"),
            "agents say they run modules"
        );
        let pushed = cluster.push_module(&module).await.unwrap();
        assert_eq!(pushed.stored_on.len(), 2, "{pushed:?}");
        let h = &pushed.hash;
        assert_eq!(
            pushed.kernels,
            ["erf", "erf_burn", "scale"].map(|k| format!("wasm:{h}:{k}"))
        );

        // A farm of erf: the same libm as the native side, bit for bit.
        let xs: Vec<Array> = (0..40)
            .map(|i| Array::list((0..25).map(|j| (i * 25 + j) as f64 / 300.0 - 1.5).collect()))
            .collect();
        let farm = format!("farm(seq(wasm:{h}:erf))").parse().unwrap();
        let out = cluster.run(&farm, xs.clone()).await.unwrap();
        for (x, y) in xs.iter().zip(&out) {
            let want: Vec<f64> = x.data.iter().map(|&v| libm::erf(v)).collect();
            assert_eq!(y.data, want);
            assert_eq!(y.shape, x.shape);
        }
        // Arguments, and a matrix keeps its shape.
        let burn = format!("farm(seq(wasm:{h}:erf_burn(50)), 4)")
            .parse()
            .unwrap();
        let m = Array::matrix(2, 3, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let out = cluster.run(&burn, [m.clone()]).await.unwrap();
        assert_eq!(out, [m]);

        // A streamed pipeline's stage, before a native one.
        let pipe = format!("pipe(seq(wasm:{h}:scale(2)), seq(square))")
            .parse()
            .unwrap();
        let out = cluster.run(&pipe, inputs(30)).await.unwrap();
        for (i, a) in out.iter().enumerate() {
            assert_eq!(a.data, [(2.0 * i as f64).powi(2), 1.0]);
        }

        // The guest's own error is a task error naming the kernel.
        let bad = format!("seq(wasm:{h}:scale)").parse().unwrap();
        let e = cluster.run(&bad, inputs(1)).await.unwrap_err().to_string();
        assert!(
            e.contains(&format!("wasm:{h}:scale: scale: missing argument f")),
            "{e}"
        );
        // An export that is not a kernel, a module never pushed, a bad name.
        for (kernel, says) in [
            (
                format!("wasm:{h}:skelpi_alloc"),
                "has no kernel \"skelpi_alloc\" (its kernels: erf, erf_burn, scale)".to_owned(),
            ),
            (
                format!("wasm:{}:erf", "0".repeat(64)),
                format!(
                    "module {} is not stored on this agent: push it first",
                    "0".repeat(64)
                ),
            ),
            (
                "wasm:abc:erf".to_owned(),
                "is not a WebAssembly kernel name".to_owned(),
            ),
        ] {
            let tree = format!("seq({kernel})").parse().unwrap();
            let e = cluster.run(&tree, inputs(1)).await.unwrap_err().to_string();
            assert!(e.contains(&says), "{kernel}: {e}");
        }
        cluster.close().await;
    });
}

#[test]
fn hostile_modules_are_refused_or_fail_their_task_and_the_agent_keeps_serving() {
    // Small limits, so that the endless loop ends fast.
    let limits = Limits {
        fuel: 20_000_000,
        memory: 4 << 20,
    };
    let opts = LocalOptions {
        kernels: Some(Registry::builtin().with_modules(Some(Modules::new(limits, 1 << 20, None)))),
        ..LocalOptions::default()
    };
    smol::block_on(async {
        let mut cluster = Cluster::local_with(&[opts], &Default::default())
            .await
            .unwrap();
        let module = guest(HOSTILE);
        let good = locate::example_guest();

        // A hash that is not the module's: refused, the connection serves on.
        let wrong = skelpi_agent::kernels::wasm::hash(b"something else");
        let e = skelpi::modules::push(&mut cluster.agents_mut()[0], &wrong, &module)
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Agent { .. }), "{e:?}");
        let real = skelpi_agent::kernels::wasm::hash(&module);
        assert!(
            e.to_string()
                .contains(&format!("its SHA-256 is {real}, not the claimed {wrong}")),
            "{e}"
        );
        cluster.agents_mut()[0].ping().await.unwrap();

        // Modules that are not modules or break the ABI.
        for (bytes, says) in [
            (
                b"\0asm but not really".to_vec(),
                "not a valid WebAssembly module",
            ),
            (
                wat::parse_str(
                    r#"(module (import "env" "f" (func)) (memory (export "memory") 1))"#,
                )
                .unwrap(),
                "it imports env::f (a guest may import nothing)",
            ),
            (
                wat::parse_str(
                    r#"(module (memory (export "memory") 1)
                    (func (export "k") (param i32 i32 i32 i32) (result i64) (i64.const 0)))"#,
                )
                .unwrap(),
                "it exports no skelpi_alloc(i32) -> i32",
            ),
            (
                guest(""),
                "it exports no kernel: a function (i32, i32, i32, i32) -> i64",
            ),
            (
                vec![0; 2 << 20],
                "larger than the 1044480 bytes a push carries",
            ),
        ] {
            let e = cluster.push_module(&bytes).await.unwrap_err();
            assert!(e.to_string().contains(says), "{says}: {e}");
            if bytes.len() < 1 << 20 {
                assert!(matches!(e, PushError::Refused { .. }), "{e:?}");
            }
        }

        let pushed = cluster.push_module(&module).await.unwrap();
        let h = pushed.hash.clone();
        let ok = cluster.push_module(&good).await.unwrap();
        let scale = format!("seq(wasm:{}:scale(3))", ok.hash).parse().unwrap();
        for (kernel, says) in [
            (
                "spin",
                "used all its fuel (20000000 units) — an endless loop".to_owned(),
            ),
            ("bomb", "grew its memory past the limit of 4 MiB".to_owned()),
            (
                "trap",
                "trapped: wasm `unreachable` instruction executed".to_owned(),
            ),
            ("recurse", "trapped: call stack exhausted".to_owned()),
            (
                "wild",
                "returned 128 bytes at 2147418112, outside its memory of 65536 bytes".to_owned(),
            ),
        ] {
            let tree = format!("seq(wasm:{h}:{kernel})").parse().unwrap();
            let started = Instant::now();
            let e = cluster.run(&tree, inputs(1)).await.unwrap_err();
            assert!(matches!(e, JobError::Task(_)), "{kernel}: {e:?}");
            let e = e.to_string();
            assert!(
                e.contains(&format!("wasm:{h}:{kernel}: {says}")),
                "{kernel}: {e}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{kernel}: took {:?}",
                started.elapsed()
            );
            // The agent still serves, modules and all.
            let out = cluster.run(&scale, inputs(2)).await.unwrap();
            assert_eq!(out[1].data, [3.0, -1.5]);
        }
        cluster.close().await;
    });
}

#[test]
fn skelpi_pushes_modules_by_command_and_from_job_files() {
    let dir = Scratch::new("wasm-cli");
    std::fs::write(dir.0.join("guest.wasm"), locate::example_guest()).unwrap();
    let (code, out, err) = skelpi(&["module", "push", &dir.path("guest.wasm"), "--local", "1"]);
    assert_eq!(code, Some(0), "{err}");
    let kernels: Vec<&str> = out.lines().collect();
    assert_eq!(kernels.len(), 3, "{out}");
    assert!(
        kernels[0].starts_with("wasm:") && kernels[0].ends_with(":erf"),
        "{out}"
    );
    assert!(err.contains("guest.wasm: stored on"), "{err}");
    let hash = hash_of(&kernels.iter().map(|k| k.to_string()).collect::<Vec<_>>()).to_owned();

    // A job naming the file: pushed first, then run by hash.
    let job = dir.path("scale.toml");
    std::fs::write(
        &job,
        "skeleton = \"farm(seq(wasm:guest.wasm:scale(3)))\"\n\
         [input]\ngenerate = \"range\"\nitems = 6\nlength = 2\n",
    )
    .unwrap();
    let results = dir.path("out.jsonl");
    let (code, _, err) = skelpi(&["run", &job, "--local", "2", "--out", &results]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains(&format!("module {hash} stored on")), "{err}");
    assert!(err.contains(&format!("wasm:{hash}:scale(3)")), "{err}");
    let lines = std::fs::read_to_string(&results).unwrap();
    assert_eq!(lines.lines().count(), 6, "{lines}");
    assert!(lines.contains("\"data\":[6.0,9.0]"), "{lines}");

    // A missing module file and a file that is not a module.
    std::fs::write(&job, "skeleton = \"seq(wasm:missing.wasm:f)\"\n[input]\ngenerate = \"range\"\nitems = 1\nlength = 1\n").unwrap();
    let (code, _, err) = skelpi(&["run", &job, "--local", "1"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("cannot read module file") && err.contains("missing.wasm"),
        "{err}"
    );
    let (code, _, err) = skelpi(&["module", "push", &job, "--local", "1"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not a valid WebAssembly module"), "{err}");
}

#[test]
fn a_module_evicted_from_the_agents_cache_is_pushed_again_and_its_task_retried() {
    // The agent's cache holds one module, and it has no module folder: two
    // modules used alternately evict each other, and each job finds its
    // module gone. The master pushes it again and sends the task again,
    // without taking the agent for lost.
    let a = locate::example_guest();
    let one = Modules::new(Limits::default(), a.len() * 3 / 2, None);
    let opts = LocalOptions {
        kernels: Some(Registry::builtin().with_modules(Some(one))),
        ..LocalOptions::default()
    };
    // The same kernels under another hash: a custom section at the end.
    let mut b = a.clone();
    b.extend_from_slice(&[0, 5, 4, b't', b'w', b'i', b'n']);
    smol::block_on(async {
        let mut cluster = Cluster::local_with(&[opts], &Default::default())
            .await
            .unwrap();
        let ha = cluster.push_module(&a).await.unwrap().hash;
        let hb = cluster.push_module(&b).await.unwrap().hash;
        assert_ne!(ha, hb);
        for (round, hash) in [&ha, &hb, &ha, &hb].into_iter().enumerate() {
            let tree = format!("farm(seq(wasm:{hash}:scale(3)))").parse().unwrap();
            let out = cluster.run(&tree, inputs(40)).await;
            let out = out.unwrap_or_else(|e| panic!("round {round}: {e}"));
            for (i, r) in out.iter().enumerate() {
                assert_eq!(r.data, [3.0 * i as f64, -1.5], "round {round}");
            }
            assert!(cluster.agents()[0].broken().is_none(), "round {round}");
        }
        cluster.close().await;
    });
}

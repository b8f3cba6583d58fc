//! Hot code loading: stages of a streamed pipeline, and of farms, maps and
//! routed pipelines, swap their kernels — native to native, native to a
//! WebAssembly module pushed meanwhile, and to a kernel the agent lacks
//! (refused) — while 10,000 items flow; every result comes once, in order,
//! from exactly one of each stage's kernels, with one switch point per
//! stage, the one the job reported.

use crate::locate;
use crate::support::{Scratch, skelpi};
use skelpi::cluster::Cluster;
use skelpi::runtime::stream::{self, SwapOutcome, Swapped};
use skelpi_proto::Array;
use skelpi_proto::skeleton::{Kernel, Skeleton};

const ITEMS: u64 = 10_000;

#[test]
fn stages_swap_kernels_mid_stream_without_losing_or_repeating_an_item() {
    let guest = locate::example_guest();
    smol::block_on(async {
        let mut cluster = Cluster::local(3, &Default::default()).await.unwrap();
        let pushed = cluster.push_module(&guest).await.unwrap();
        let wasm_scale = Kernel::new(&format!("wasm:{}:scale", pushed.hash), [5.0]);
        let stages = [
            Kernel::new("scale", [2.0]),
            Kernel::new("identity", []),
            Kernel::new("square", []),
        ];
        let (swapper, swaps) = stream::swaps(stages.len());
        let inputs = (1..=ITEMS).map(|x| Array::list(vec![x as f64]));
        // Per result, stage 0's factor times stage 1's.
        let mut factors = Vec::new();
        let reports = cluster
            .stream_pipeline_swapping(&stages, inputs, None, &swaps, |i, a| {
                assert_eq!(i, factors.len() as u64, "results in order, once each");
                let x = (i + 1) as f64;
                factors.push((a.data[0].sqrt() / x).round() as u64);
                match i {
                    1_000 => assert!(swapper.swap(2, Kernel::new("no_such_kernel", []))),
                    3_000 => assert!(swapper.swap(0, Kernel::new("scale", [3.0]))),
                    5_000 => assert!(swapper.swap(1, wasm_scale.clone())),
                    _ => {}
                }
            })
            .await
            .unwrap();
        assert_eq!(factors.len() as u64, ITEMS);
        let from = |stage: usize| match reports[stage].swaps[..] {
            [ref s] => match s.outcome {
                SwapOutcome::From(k) => k,
                ref other => panic!("stage {stage}: {other:?}"),
            },
            ref all => panic!("stage {stage}: {all:?}"),
        };
        let (k0, k1) = (from(0), from(1));
        // Mid-stream: after the results that asked, before the end.
        assert!((3_000..ITEMS).contains(&k0), "stage 0 switched at {k0}");
        assert!((5_000..ITEMS).contains(&k1), "stage 1 switched at {k1}");
        for (i, &f) in factors.iter().enumerate() {
            let i = i as u64;
            let a = if i < k0 { 2 } else { 3 };
            let b = if i < k1 { 1 } else { 5 };
            assert_eq!(f, a * b, "item {i}: switch points {k0}, {k1}");
        }
        assert_eq!(reports[0].kernel, Kernel::new("scale", [3.0]));
        assert_eq!(reports[1].kernel, wasm_scale);
        // The refused swap left stage 2 as it was.
        assert_eq!(reports[2].kernel, Kernel::new("square", []));
        match &reports[2].swaps[0].outcome {
            SwapOutcome::Refused(why) => assert!(why.contains("no_such_kernel"), "{why}"),
            other => panic!("{other:?}"),
        }
        cluster.close().await;
    });
}

/// Runs `tree` routed over `ITEMS` inputs (each `width` copies of its
/// number, from 1), asking `swaps` (stage, kernel) once `after` results
/// are in; checks every result comes once, in order, with one kernel per
/// input (a map's chunks agree); returns each result's factor and what
/// became of each stage's swaps.
fn routed(
    cluster: &mut Cluster,
    tree: &str,
    width: usize,
    after: u64,
    swaps: &[(usize, Kernel)],
) -> (Vec<f64>, Vec<Vec<Swapped>>) {
    let tree: Skeleton = tree.parse().unwrap();
    let (swapper, channels) = stream::swaps(tree.seqs().len());
    let inputs = (1..=ITEMS).map(|x| Array::list(vec![x as f64; width]));
    let mut factors = Vec::new();
    let swapped = smol::block_on(
        cluster.run_routed_swapping(&tree, inputs, &channels, |i, a| {
            assert_eq!(i, factors.len() as u64, "{tree}: once each, in order");
            assert_eq!(a.data.len(), width);
            assert!(
                a.data.iter().all(|&v| v == a.data[0]),
                "{tree}: item {i} ran one kernel: {a:?}"
            );
            factors.push(a.data[0] / (i + 1) as f64);
            if i + 1 == after {
                for (stage, kernel) in swaps {
                    assert!(swapper.swap(*stage, kernel.clone()));
                }
            }
        }),
    )
    .unwrap_or_else(|e| panic!("{tree}: {e}"));
    assert_eq!(factors.len() as u64, ITEMS, "{tree}");
    (factors, swapped)
}

/// The switch point of a swap applied mid-job (after the results that
/// asked it, before the end).
fn switch_point(s: &Swapped, after: u64) -> u64 {
    match s.outcome {
        SwapOutcome::From(k) if (after..ITEMS).contains(&k) => k,
        ref other => panic!("{}: {other:?}", s.kernel),
    }
}

#[test]
fn farms_maps_and_routed_pipelines_swap_kernels_mid_job_without_losing_or_repeating_an_item() {
    let guest = locate::example_guest();
    smol::block_on(async {
        let mut cluster = Cluster::local(3, &Default::default()).await.unwrap();
        let pushed = cluster.push_module(&guest).await.unwrap();
        let wasm_scale = Kernel::new(&format!("wasm:{}:scale", pushed.hash), [5.0]);
        let triple = Kernel::new("scale", [3.0]);
        for (tree, width) in [("farm(seq(scale(2)))", 1), ("map(4, seq(scale(2)))", 4)] {
            // A kernel no agent offers is refused before any task runs
            // it; the other swap applies.
            let swaps = [(0, Kernel::new("no_such_kernel", [])), (0, triple.clone())];
            let (factors, swapped) = routed(&mut cluster, tree, width, 3_000, &swaps);
            match &swapped[0][..] {
                [refused, applied] => {
                    assert!(
                        matches!(&refused.outcome, SwapOutcome::Refused(why)
                            if why.contains("does not offer no_such_kernel")),
                        "{tree}: {refused:?}"
                    );
                    let k = switch_point(applied, 3_000);
                    for (i, &f) in factors.iter().enumerate() {
                        let want = if (i as u64) < k { 2.0 } else { 3.0 };
                        assert_eq!(f, want, "{tree}: item {i}, switch point {k}");
                    }
                }
                all => panic!("{tree}: {all:?}"),
            }
        }
        // A farm of pipelines with farms: the inner farm, one per outer
        // replica, numbers its items itself; the switch point still
        // counts job inputs.
        let tree = "farm(pipe(seq(scale(2)), farm(seq(identity))))";
        let swaps = [(1, Kernel::new("scale", [5.0]))];
        let (factors, swapped) = routed(&mut cluster, tree, 1, 3_000, &swaps);
        let k = switch_point(&swapped[1][0], 3_000);
        for (i, &f) in factors.iter().enumerate() {
            let want = if (i as u64) < k { 2.0 } else { 10.0 };
            assert_eq!(f, want, "{tree}: item {i}, switch point {k}");
        }
        // A pipeline with a farm is routed: stage 0 to a native kernel,
        // stage 1 (in the farm) to a module's.
        let tree = "pipe(seq(scale(2)), farm(seq(identity)))";
        let swaps = [(0, triple.clone()), (1, wasm_scale.clone())];
        let (factors, swapped) = routed(&mut cluster, tree, 1, 5_000, &swaps);
        let (k0, k1) = (
            switch_point(&swapped[0][0], 5_000),
            switch_point(&swapped[1][0], 5_000),
        );
        for (i, &f) in factors.iter().enumerate() {
            let i = i as u64;
            let a = if i < k0 { 2.0 } else { 3.0 };
            let b = if i < k1 { 1.0 } else { 5.0 };
            assert_eq!(f, a * b, "item {i}: switch points {k0}, {k1}");
        }
        cluster.close().await;
    });
}

/// Runs `job` (4,000 items of the range generator: item i is `[i]`) with
/// `--swap STAGE=scale(FACTOR)@100` on two local agents, writing to
/// `out`; checks stage `stage` reported a switch point k after those 100
/// results, and every item i is `old * i` before k and `new * i` from it
/// on.
fn run_swapped(job: &str, out: &str, (stage, factor): (usize, f64), (old, new): (f64, f64)) {
    let swap = format!("{stage}=scale({factor})@100");
    let (code, _, err) = skelpi(&["run", job, "--local", "2", "--out", out, "--swap", &swap]);
    assert_eq!(code, Some(0), "{err}");
    let said = format!("stage {stage} runs scale({factor}) from item");
    let line = err
        .lines()
        .find(|l| l.contains(&said))
        .unwrap_or_else(|| panic!("{err}"));
    let k: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((100..4000).contains(&k), "{line}");
    let text = std::fs::read_to_string(out).unwrap();
    assert_eq!(text.lines().count(), 4000);
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let i = v["index"].as_u64().unwrap();
        let want = if i < k { old } else { new } * i as f64;
        assert_eq!(v["data"][0].as_f64().unwrap(), want, "{l}");
    }
}

#[test]
fn skelpi_run_swaps_a_stage_after_n_results() {
    let dir = Scratch::new("swap-cli");
    let job = dir.path("swap.toml");
    std::fs::write(
        &job,
        // More items than the stream holds in flight (3,072 for two
        // stages) after the swap is asked: stage 1 is still running then
        // (a stage that has run all its items takes no swap).
        "skeleton = \"pipe(seq(scale(2)), seq(identity))\"\n\
         [input]\ngenerate = \"range\"\nitems = 4000\nlength = 1\n",
    )
    .unwrap();
    let out = dir.path("out.jsonl");
    // Stage 1 (identity, a factor of 1 on stage 0's 2) triples.
    run_swapped(&job, &out, (1, 3.0), (2.0, 6.0));
    // A pipeline naming a module file, swapped to another of its kernels
    // (named by file too).
    std::fs::write(dir.0.join("guest.wasm"), crate::locate::example_guest()).unwrap();
    let wasm_job = dir.path("wasm.toml");
    std::fs::write(
        &wasm_job,
        "skeleton = \"pipe(seq(wasm:guest.wasm:scale(2)), seq(identity))\"\n\
         [input]\ngenerate = \"range\"\nitems = 4000\nlength = 1\n",
    )
    .unwrap();
    let (code, _, err) = skelpi(&[
        "run",
        &wasm_job,
        "--local",
        "2",
        "--out",
        &out,
        "--swap",
        "1=wasm:guest.wasm:scale(5)@100",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains(":scale(5) from item "), "{err}");
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().count(), 4000);
    assert!(text.lines().last().unwrap().contains("[39990.0]"), "{text}");
    // A farm swaps too: at one input, every input from it on tripled.
    let farm_job = dir.path("farm.toml");
    std::fs::write(
        &farm_job,
        "skeleton = \"farm(seq(scale(2)))\"\n\
         [input]\ngenerate = \"range\"\nitems = 4000\nlength = 1\n",
    )
    .unwrap();
    run_swapped(&farm_job, &out, (0, 3.0), (2.0, 3.0));
    // A swap that names no stage of the job is refused before it runs, as
    // a usage error.
    let (code, _, err) = skelpi(&["run", &job, "--local", "1", "--swap", "7=square@1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("the job has stages 0 to 1"), "{err}");
    let (code, _, err) = skelpi(&["run", &job, "--local", "1", "--swap", "0=square"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("STAGE=KERNEL@RESULTS"), "{err}");
}

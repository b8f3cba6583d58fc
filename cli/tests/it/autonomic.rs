//! Managed jobs on in-process agents over real loopback TCP: the manager
//! finds the degrees a pipeline needs while it runs, says when a contract
//! cannot be met, and never loses or reorders an item.

use skelpi::cluster::Cluster;
use skelpi::runtime::autonomic::{Action, Contract, Decision, Options, Report};
use skelpi_proto::Array;
use skelpi_proto::skeleton::{Kernel, Skeleton};
use std::time::{Duration, Instant};

/// The fast stages' kernel time; the middle stage takes four times that.
const T_MS: f64 = 10.0;

fn sleepy(ms: f64) -> Skeleton {
    Skeleton::seq(Kernel::new("sleep_ms", [ms]))
}

fn slow_middle() -> Skeleton {
    Skeleton::pipe([sleepy(T_MS), sleepy(4.0 * T_MS), sleepy(T_MS)])
}

/// Distinct one-float items: a lost, repeated or misplaced one shows.
fn inputs(n: usize) -> Vec<Array> {
    (0..n).map(|i| Array::list(vec![i as f64 + 0.5])).collect()
}

/// One run: results (index, first value, when since the start), the
/// decisions, the report.
struct Run {
    results: Vec<(u64, f64, Duration)>,
    decisions: Vec<Decision>,
    report: Report,
}

async fn run(cluster: &mut Cluster, tree: &Skeleton, n: usize, opts: &Options) -> Run {
    let start = Instant::now();
    let mut results = Vec::new();
    let mut decisions = Vec::new();
    let (result, report) = cluster
        .run_managed(
            tree,
            inputs(n),
            opts,
            |i, a| results.push((i, a.data[0], start.elapsed())),
            |d| decisions.push(d.clone()),
        )
        .await;
    result.expect("the managed job runs");
    Run {
        results,
        decisions,
        report: report.expect("a report"),
    }
}

/// Every item once, in order, unchanged (the kernels only sleep).
fn assert_all_in_order(run: &Run, n: usize) {
    assert_eq!(run.results.len(), n, "one result per item");
    for (k, &(i, v, _)) in run.results.iter().enumerate() {
        assert_eq!((i, v), (k as u64, k as f64 + 0.5), "result {k}");
    }
}

/// Results per second between `from` and `to` (since the start).
fn rate(run: &Run, from: Duration, to: Duration) -> f64 {
    let n = run
        .results
        .iter()
        .filter(|&&(_, _, t)| t >= from && t < to)
        .count();
    n as f64 / (to - from).as_secs_f64()
}

/// Results per second of a static run, leaving out its first and last
/// `skip` results: the pipeline filling, and draining (when the first
/// stage has no more work, the others finish faster than in steady state).
fn steady_rate(run: &Run, skip: usize) -> f64 {
    let n = run.results.len();
    let first = run.results[skip].2;
    let last = run.results[n - 1 - skip].2;
    (n - 1 - 2 * skip) as f64 / (last - first).as_secs_f64()
}

fn fixed(degrees: &[usize]) -> Options {
    Options {
        fixed: Some(degrees.to_vec()),
        ..Options::default()
    }
}

/// The acceptance test of the manager. On 4 agents of one worker thread
/// each (8 task credits), kernels that sleep (so 2 cores are enough): the
/// stages need 10 + 40 + 10 ms of a thread per item, so the pool's 4
/// threads allow at most 66.7 items/s, and only with more tasks out than
/// threads. The static assignments tried are those where that ceiling
/// lies (the middle stage at 2..6, the outer ones at 1 or 2); the best is
/// measured here, in the same run, on the same machinery with the manager
/// off.
#[test]
fn a_slow_middle_stage_gets_the_degree_of_the_best_static_assignment_within_10s() {
    smol::block_on(async {
        let mut cluster = Cluster::local(4, &Default::default()).await.unwrap();
        let tree = slow_middle();
        let mut best = (0.0, Vec::new());
        for d in [
            [1, 2, 1],
            [1, 3, 1],
            [1, 4, 1],
            [1, 6, 1],
            [2, 4, 2],
            [2, 5, 1],
        ] {
            let r = run(&mut cluster, &tree, 150, &fixed(&d)).await;
            assert_all_in_order(&r, 150);
            assert!(r.decisions.is_empty(), "no manager: {:?}", r.decisions);
            let x = steady_rate(&r, 25);
            eprintln!("static {d:?}: {x:.1} items/s");
            if x > best.0 {
                best = (x, d.to_vec());
            }
        }
        let n = 900;
        let r = run(&mut cluster, &tree, n, &Options::default()).await;
        for d in &r.decisions {
            eprintln!("{d}");
        }
        eprint!("{}", r.report.summary());
        assert_all_in_order(&r, n);
        assert_eq!(r.report.initial, [1, 1, 1]);
        let settled = r.report.settled_at.expect("the manager changed degrees");
        assert!(
            settled <= Duration::from_secs(10),
            "settled after {settled:?}"
        );
        assert!(r.report.degrees[1] >= 3, "{:?}", r.report.degrees);
        // The throughput from 10 s on (3 s, or to the end of the job).
        let end = r.results.last().unwrap().2;
        let to = end.min(Duration::from_secs(13));
        let from = Duration::from_secs(10);
        assert!(
            to >= from + Duration::from_secs(2),
            "the job ended at {end:?}"
        );
        let x = rate(&r, from, to);
        let ratio = x / best.0;
        eprintln!(
            "managed: {x:.1} items/s from 10 s on; best static {:?} {:.1} items/s: ratio {ratio:.3}; \
             settled after {:.2} s",
            best.1,
            best.0,
            settled.as_secs_f64()
        );
        assert!(ratio >= 0.85, "{x:.1} against the best static {best:?}");
        // Every decision says what it saw and did, the first names the
        // bottleneck.
        assert!(
            r.decisions[0]
                .saw
                .contains("bottleneck stage 2 (sleep_ms(40))"),
            "{}",
            r.decisions[0]
        );
    });
}

/// A contract far beyond the pool: said unmet, and why, with a bounded
/// number of changes however long the job runs.
#[test]
fn a_contract_the_pool_cannot_meet_is_said_unmet_without_thrashing() {
    smol::block_on(async {
        let mut cluster = Cluster::local(4, &Default::default()).await.unwrap();
        let opts = Options {
            contract: Contract::Throughput(500.0),
            ..Options::default()
        };
        let n = 400;
        let r = run(&mut cluster, &slow_middle(), n, &opts).await;
        eprint!("{}", r.report.summary());
        assert_all_in_order(&r, n);
        assert!(!r.report.met());
        let summary = r.report.summary();
        assert!(
            summary.contains("contract 500 items/s — NOT met"),
            "{summary}"
        );
        let why = r.report.limit.as_deref().expect("says why");
        assert!(
            why.contains("worker threads are busy")
                || why.contains("credits")
                || why.contains("did not raise"),
            "{why}"
        );
        assert!(r.results.last().unwrap().2 >= Duration::from_secs(5));
        assert!(r.report.changes <= 4, "{:#?}", r.decisions);
        let holds = r
            .decisions
            .iter()
            .filter(|d| d.action == Action::Hold)
            .count();
        assert!(holds <= 2, "a hold is said once: {:#?}", r.decisions);
        assert!(
            r.decisions
                .iter()
                .any(|d| d.did.contains("above the pool's ceiling")),
            "{:#?}",
            r.decisions
        );
    });
}

/// A contract below what the stages were given: the feeder is paced to it,
/// spare slots are released, and the trace carries the decisions.
#[test]
fn a_met_contract_paces_the_feeder_releases_slots_and_marks_the_trace() {
    smol::block_on(async {
        let mut cluster = Cluster::local(4, &Default::default()).await.unwrap();
        cluster.set_tracing(true);
        let farm = |ms: f64, n: u32| Skeleton::farm(sleepy(ms), Some(n));
        let tree = Skeleton::pipe([farm(T_MS, 3), farm(4.0 * T_MS, 4), farm(T_MS, 3)]);
        let opts = Options {
            contract: Contract::Throughput(15.0),
            ..Options::default()
        };
        let n = 80;
        let r = run(&mut cluster, &tree, n, &opts).await;
        eprint!("{}", r.report.summary());
        assert_all_in_order(&r, n);
        assert_eq!(r.report.initial, [3, 4, 3]);
        assert!(r.report.met(), "{}", r.report.summary());
        assert_eq!(r.report.degrees, [1, 1, 1], "{:#?}", r.decisions);
        assert!(r.decisions.iter().all(|d| d.action == Action::Release));
        // Paced: no faster than the contract (a little over it at most:
        // the first item goes at once).
        let x = n as f64 / r.results.last().unwrap().2.as_secs_f64();
        assert!(x <= 15.0 * 1.05, "{x:.1} items/s");
        let trace = cluster.take_trace().expect("traced").expect("collected");
        assert_eq!(trace.marks.len(), r.decisions.len(), "{:?}", trace.marks);
        assert!(trace.marks[0].text.starts_with("manager: releases slots"));
        let back =
            skelpi::trace::chrome::from_json(&skelpi::trace::chrome::to_json(&trace)).unwrap();
        assert_eq!(back.marks, trace.marks);
        let analysis = skelpi::trace::Analysis::of(&trace).to_string();
        assert!(analysis.contains("s manager: releases slots"), "{analysis}");
    });
}

#[test]
fn a_tree_that_cannot_be_managed_is_refused_before_any_item_is_sent() {
    smol::block_on(async {
        let mut cluster = Cluster::local(1, &Default::default()).await.unwrap();
        let tree = Skeleton::map(2, sleepy(1.0));
        let mut results = 0;
        let (result, report) = cluster
            .run_managed(
                &tree,
                inputs(3),
                &Options::default(),
                |_, _| results += 1,
                |_| {},
            )
            .await;
        let e = result.unwrap_err().to_string();
        assert!(
            e.contains("a managed job is a pipeline of seq(k) and farm(seq(k)) stages"),
            "{e}"
        );
        assert!(report.is_none());
        assert_eq!(results, 0);
        // The cluster still runs managed jobs.
        let r = run(&mut cluster, &sleepy(0.0), 5, &Options::default()).await;
        assert_all_in_order(&r, 5);
    });
}

#[test]
fn a_failing_stage_ends_a_managed_job_with_its_error_and_the_cluster_runs_the_next() {
    smol::block_on(async {
        let mut cluster = Cluster::local(2, &Default::default()).await.unwrap();
        let tree = Skeleton::pipe([sleepy(1.0), Skeleton::seq(Kernel::new("fail", []))]);
        let (result, report) = cluster
            .run_managed(&tree, inputs(20), &Options::default(), |_, _| {}, |_| {})
            .await;
        let e = result.unwrap_err().to_string();
        assert!(e.contains("(fail) failed on agent local-"), "{e}");
        assert_eq!(report.expect("it started").items, 0);
        let r = run(&mut cluster, &slow_middle(), 10, &Options::default()).await;
        assert_all_in_order(&r, 10);
    });
}

#[test]
fn options_a_manager_cannot_run_are_refused() {
    smol::block_on(async {
        let mut cluster = Cluster::local(1, &Default::default()).await.unwrap();
        for (opts, says) in [
            (
                Options {
                    period: Duration::ZERO,
                    ..Options::default()
                },
                "too short",
            ),
            (
                Options {
                    contract: Contract::Throughput(f64::NAN),
                    ..Options::default()
                },
                "not a positive rate",
            ),
            (fixed(&[1, 0, 1]), "include 0"),
            (fixed(&[1, 1]), "2 fixed degrees for 3 stages"),
        ] {
            let (result, report) = cluster
                .run_managed(&slow_middle(), inputs(1), &opts, |_, _| {}, |_| {})
                .await;
            let e = result.unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
            assert!(report.is_none());
        }
    });
}

//! Skeletons on 1, 2 and 5 in-process agents over real loopback TCP give
//! exactly what the in-process sequential reference gives; failures come
//! back as task errors and leave the cluster usable.

use rand::{Rng, SeedableRng, rngs::StdRng};
use skelpi::cluster::Cluster;
use skelpi::runtime::{JobError, sequential};
use skelpi_agent::kernels::Registry;
use skelpi_proto::Array;
use skelpi_proto::skeleton::{Kernel, Skeleton};

fn k(name: &str, args: &[f64]) -> Kernel {
    Kernel::new(name, args.iter().copied())
}

fn seq(name: &str, args: &[f64]) -> Skeleton {
    Skeleton::seq(k(name, args))
}

/// Random lists, some empty, values spread over several magnitudes.
fn random_inputs(rng: &mut StdRng, n: usize) -> Vec<Array> {
    (0..n)
        .map(|_| {
            let len = rng.random_range(0..40);
            Array::list((0..len).map(|_| rng.random_range(-8.0..8.0)).collect())
        })
        .collect()
}

/// The trees under test: every skeleton, then nestings.
fn trees() -> Vec<Skeleton> {
    let unordered = Skeleton::Farm {
        worker: Box::new(seq("square", &[])),
        replicas: Some(3),
        ordered: false,
    };
    vec![
        seq("square", &[]),
        Skeleton::pipe([seq("scale", &[3.0]), seq("square", &[]), seq("sum", &[])]),
        Skeleton::farm(seq("square", &[]), None),
        Skeleton::farm(seq("erf_burn", &[3.0]), Some(7)),
        unordered,
        Skeleton::map(4, seq("square", &[])),
        Skeleton::reduce(k("sum", &[])),
        Skeleton::reduce(k("max", &[])),
        Skeleton::feedback(seq("scale", &[0.5]), k("above", &[1.0])),
        // Nestings.
        Skeleton::pipe([
            Skeleton::farm(seq("scale", &[2.0]), Some(2)),
            Skeleton::farm(seq("square", &[]), None),
        ]),
        Skeleton::farm(
            Skeleton::pipe([seq("square", &[]), seq("scale", &[-1.0])]),
            Some(3),
        ),
        Skeleton::map(3, Skeleton::map(2, seq("square", &[]))),
        Skeleton::pipe([
            Skeleton::map(5, seq("square", &[])),
            Skeleton::reduce(k("sum", &[])),
        ]),
        Skeleton::farm(
            Skeleton::feedback(Skeleton::map(2, seq("scale", &[0.25])), k("above", &[0.5])),
            None,
        ),
    ]
}

fn sorted(mut v: Vec<Vec<f64>>) -> Vec<Vec<f64>> {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v
}

#[test]
fn every_skeleton_matches_the_sequential_reference_on_1_2_and_5_agents() {
    let reg = Registry::builtin();
    let mut rng = StdRng::seed_from_u64(0x5ce1_917e);
    smol::block_on(async {
        for agents in [1, 2, 5] {
            let mut cluster = Cluster::local(agents, &Default::default()).await.unwrap();
            for tree in trees() {
                let inputs = random_inputs(&mut rng, 23);
                let want = sequential::run(&reg, &tree, inputs.clone()).unwrap();
                let got = cluster.run(&tree, inputs).await.unwrap_or_else(|e| {
                    panic!("{tree} on {agents} agents failed: {e}");
                });
                let (want, got): (Vec<_>, Vec<_>) = (
                    want.into_iter().map(|a| a.data).collect(),
                    got.into_iter().map(|a| a.data).collect(),
                );
                if matches!(tree, Skeleton::Farm { ordered: false, .. }) {
                    assert_eq!(sorted(got), sorted(want), "{tree} on {agents} agents");
                } else {
                    assert_eq!(got, want, "{tree} on {agents} agents");
                }
            }
            cluster.close().await;
        }
    });
}

#[test]
fn an_empty_input_gives_no_results() {
    smol::block_on(async {
        let mut cluster = Cluster::local(2, &Default::default()).await.unwrap();
        for tree in trees() {
            let got = cluster.run(&tree, Vec::new()).await.unwrap();
            assert!(got.is_empty(), "{tree} gave {got:?}");
        }
        cluster.close().await;
    });
}

#[test]
fn a_failing_kernel_in_a_nested_farm_names_its_task_and_the_cluster_serves_on() {
    smol::block_on(async {
        let mut cluster = Cluster::local(2, &Default::default()).await.unwrap();
        let inputs: Vec<Array> = (0..50).map(|i| Array::list(vec![f64::from(i)])).collect();
        for (bad, panicked) in [("fail", false), ("panic", true)] {
            let tree = Skeleton::pipe([
                seq("identity", &[]),
                Skeleton::farm(
                    Skeleton::pipe([seq("square", &[]), Skeleton::map(2, seq(bad, &[]))]),
                    Some(3),
                ),
            ]);
            let err = cluster.run(&tree, inputs.clone()).await.unwrap_err();
            let JobError::Task(t) = &err else {
                panic!("expected a task error, got {err}");
            };
            assert!(t.task.starts_with("item "), "{err}");
            assert!(t.task.contains(" part "), "{err}");
            assert_eq!(t.kernel, bad);
            assert_eq!(t.panicked, panicked, "{err}");
            assert!(t.agent.contains("local-"), "{err}");
            assert!(err.to_string().contains(&t.task), "{err}");
            // The next job runs on every agent as if nothing happened.
            let ok = cluster
                .run(&Skeleton::farm(seq("square", &[]), None), inputs.clone())
                .await
                .unwrap();
            assert_eq!(ok.len(), inputs.len());
            assert_eq!(ok[7].data, [49.0]);
            for agent in cluster.agents_mut() {
                agent.ping().await.unwrap();
            }
        }
        cluster.close().await;
    });
}

#[test]
fn pmap_returns_chunks_in_order() {
    let mut rng = StdRng::seed_from_u64(7);
    smol::block_on(async {
        let mut cluster = Cluster::local(2, &Default::default()).await.unwrap();
        let chunks = random_inputs(&mut rng, 17);
        let want = sequential::run(
            &Registry::builtin(),
            &seq("erf_burn", &[4.0]),
            chunks.clone(),
        )
        .unwrap();
        let got = cluster.pmap(k("erf_burn", &[4.0]), chunks).await.unwrap();
        assert_eq!(got, want);
        cluster.close().await;
    });
}

#[test]
fn a_feedback_that_never_ends_is_an_error_not_a_hang() {
    smol::block_on(async {
        let mut cluster = Cluster::local(1, &Default::default()).await.unwrap();
        let tree = Skeleton::Feedback {
            body: Box::new(seq("identity", &[])),
            until: k("above", &[0.0]),
            max_rounds: 5,
        };
        let err = cluster
            .run(&tree, vec![Array::list(vec![1.0])])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("5 rounds"), "{err}");
        cluster.agents_mut()[0].ping().await.unwrap();
        cluster.close().await;
    });
}

#[test]
fn a_job_that_fails_with_large_frames_in_flight_leaves_the_connections_usable() {
    // Large items keep frames in flight when the error stops the job: the
    // tasks already queued are written whole and their results awaited, so
    // the (encrypted) connections stay in step for the next job.
    smol::block_on(async {
        let mut cluster = Cluster::local(2, &Default::default()).await.unwrap();
        let tree = Skeleton::pipe([Skeleton::farm(seq("identity", &[]), None), seq("fail", &[])]);
        for round in 0..3 {
            let inputs = (0..24).map(|i| Array::list(vec![f64::from(i); 300_000]));
            let err = cluster.run(&tree, inputs).await.unwrap_err();
            assert!(matches!(err, JobError::Task(_)), "round {round}: {err}");
            let ok = cluster
                .run(&seq("sum", &[]), [Array::list(vec![1.5; 1000])])
                .await
                .unwrap();
            assert_eq!(ok[0].data, [1500.0]);
            for agent in cluster.agents_mut() {
                agent.ping().await.unwrap();
                assert!(!agent.is_broken());
            }
        }
        cluster.close().await;
    });
}

#[test]
fn a_pipeline_of_seq_stages_streams_agent_to_agent_and_wraps_over_fewer_agents() {
    smol::block_on(async {
        let mut cluster = Cluster::local(2, &Default::default()).await.unwrap();
        let stages = [k("square", &[]), k("scale", &[2.0]), k("scale", &[-1.0])];
        let inputs: Vec<Array> = (0..300)
            .map(|i| Array::list(vec![f64::from(i); 3]))
            .collect();
        let mut got = Vec::new();
        let reports = cluster
            .stream_pipeline(&stages, inputs, None, |index, a| got.push((index, a.data)))
            .await
            .unwrap();
        assert_eq!(got.len(), 300);
        for (i, (index, data)) in got.into_iter().enumerate() {
            assert_eq!(index, i as u64);
            assert_eq!(data, vec![-2.0 * (i * i) as f64; 3]);
        }
        // get_nodes: stage i on agent i mod 2. The master sends items only
        // to stage 0, so stages 1 and 2 got theirs from the previous
        // stage's agent.
        let placed: Vec<(&str, u64)> = reports
            .iter()
            .map(|r| (r.agent.as_str(), r.items))
            .collect();
        assert_eq!(
            placed,
            [("local-0", 300), ("local-1", 300), ("local-0", 300)]
        );
        cluster.close().await;
    });
}

#[test]
fn a_streamed_stage_that_fails_names_item_kernel_and_agent() {
    smol::block_on(async {
        let mut cluster = Cluster::local(3, &Default::default()).await.unwrap();
        let inputs = || (0..50).map(|i| Array::list(vec![f64::from(i)]));
        let tree = Skeleton::pipe([seq("square", &[]), seq("fail", &[]), seq("identity", &[])]);
        let err = cluster.run(&tree, inputs()).await.unwrap_err();
        let JobError::Task(t) = &err else {
            panic!("expected a task error, got {err}");
        };
        assert_eq!(
            (t.task.as_str(), t.kernel.as_str()),
            ("item 0", "fail"),
            "{err}"
        );
        assert!(t.agent.starts_with("local-1 ("), "{err}");
        // A kernel no agent has is refused when the stage opens.
        let tree = Skeleton::pipe([seq("square", &[]), seq("no_such_kernel", &[])]);
        let err = cluster.run(&tree, inputs()).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("no_such_kernel") && text.contains("local-1"),
            "{text}"
        );
        // The cluster streams the next pipeline as if nothing happened.
        let tree = Skeleton::pipe([seq("square", &[]), seq("sum", &[])]);
        let out = cluster.run(&tree, inputs()).await.unwrap();
        assert_eq!(out[7].data, [49.0]);
        for agent in cluster.agents_mut() {
            agent.ping().await.unwrap();
        }
        cluster.close().await;
    });
}

#[test]
fn a_streaming_reduce_pairs_items_like_the_reference_for_every_count() {
    let reg = Registry::builtin();
    let mut rng = StdRng::seed_from_u64(11);
    smol::block_on(async {
        let mut cluster = Cluster::local(2, &Default::default()).await.unwrap();
        // sum over floats of mixed magnitudes: any other pairing would
        // round differently.
        let tree = Skeleton::reduce(k("sum", &[]));
        for n in [1, 2, 3, 5, 6, 7, 8, 11, 16, 17, 33, 100] {
            let inputs: Vec<Array> = (0..n)
                .map(|_| Array::list(vec![rng.random_range(-1e8..1e8), rng.random::<f64>()]))
                .collect();
            let want = sequential::run(&reg, &tree, inputs.clone()).unwrap();
            let got = cluster.run(&tree, inputs).await.unwrap();
            assert_eq!(got, want, "{n} items");
        }
        cluster.close().await;
    });
}

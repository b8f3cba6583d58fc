//! Embedding skelpi: two in-process agents, and one job built with
//! [`skelpi::JobBuilder`] — a farm of `square` over a few inputs — whose
//! results are checked and printed.
//!
//! `cargo run -p skelpi --example embed` (CI runs it through
//! scripts/test.sh). A program of its own would depend on `skelpi` with
//! the `local` feature for [`Cluster::local`], or reach real agents with
//! [`Cluster::connect`].

use skelpi::JobBuilder;
use skelpi::cluster::Cluster;
use skelpi::jobs::Execution;
use skelpi_proto::Array;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    smol::block_on(async {
        let mut cluster = Cluster::local(2, &Default::default()).await?;
        let inputs: Vec<Array> = (1..=8).map(|i| Array::list(vec![f64::from(i)])).collect();
        let mut squares = Vec::new();
        let outcome = JobBuilder::new("farm(seq(square))".parse()?)
            .inputs(inputs)
            .on_result(|index, a| squares.push((index, a.data)))
            .run(&mut cluster)
            .await;
        cluster.close().await;
        outcome.result?;
        assert_eq!(outcome.execution, Execution::Routed);
        for (index, data) in &squares {
            println!("input {index}: {data:?}");
        }
        let want: Vec<(u64, Vec<f64>)> = (1..=8u32)
            .map(|i| (u64::from(i) - 1, vec![f64::from(i * i)]))
            .collect();
        if squares != want {
            return Err(format!("expected {want:?}, got {squares:?}").into());
        }
        println!("{} results, as expected", outcome.results);
        Ok(())
    })
}

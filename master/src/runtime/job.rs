//! One job: a skeleton tree run over a list of inputs on a cluster's
//! connections.

use super::dispatch::Dispatcher;
use super::eval::{Ctx, Spawner, eval, source};
use super::{Item, JobError};
use crate::client::AgentConn;
use futures_lite::future;
use skelpi_agent::kernels::Array;
use skelpi_proto::skeleton::Skeleton;
use smol::LocalExecutor;

/// Runs `skeleton` on `inputs` over `conns`, handing each result to
/// `on_result` as it leaves the tree (in input order where the tree keeps
/// order). On the first error the job stops, waits for the tasks still in
/// flight (so every connection is left between frames) and returns it;
/// connections that failed are marked broken.
pub async fn run(
    conns: &mut [AgentConn],
    skeleton: &Skeleton,
    inputs: Vec<Array>,
    mut on_result: impl FnMut(Array),
) -> Result<(), JobError> {
    if conns.is_empty() {
        return Err(JobError::NoAgents);
    }
    let cores = conns
        .iter()
        .map(|c| c.info().cores as usize)
        .sum::<usize>()
        .max(1);
    let dispatcher = Dispatcher::new(conns);
    let result = {
        let ex = LocalExecutor::new();
        let (spawn_tx, spawn_rx) = async_channel::unbounded();
        let cx = Ctx {
            spawner: Spawner(spawn_tx),
            d: &dispatcher,
            cores,
        };
        let items = inputs
            .into_iter()
            .enumerate()
            .map(|(i, data)| Item {
                index: i as u64,
                origin: format!("item {i}"),
                data,
            })
            .collect();
        let work = async {
            let input = source(&cx.spawner, items);
            let out = eval(cx, skeleton, input);
            while let Ok(r) = out.recv().await {
                on_result(r?.data);
            }
            Ok(())
        };
        // Nodes hand the futures they start to this driver, which spawns
        // them; it never ends by itself.
        let driver = async {
            while let Ok(f) = spawn_rx.recv().await {
                ex.spawn(f).detach();
            }
            future::pending().await
        };
        future::or(ex.run(future::or(work, driver)), async {
            dispatcher.run_readers().await;
            Err(JobError::NoAgents)
        })
        .await
        // `ex` drops here: every node of the graph is cancelled.
    };
    future::or(dispatcher.drain(), dispatcher.run_readers()).await;
    let casualties = dispatcher.casualties();
    drop(dispatcher);
    for (conn, why) in conns.iter_mut().zip(casualties) {
        if let Some(why) = why {
            conn.mark_broken(why);
        }
    }
    result
}

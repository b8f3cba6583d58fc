//! The client against in-process agents: echo edge cases, and a connection
//! that failed halfway is not reused.

use skelpi::client::ClientError;
use skelpi::cluster::Cluster;
use skelpi_cli::bench::baseline::RawClient;
use skelpi_proto::Shape;

#[test]
fn empty_and_chunked_echoes_leave_the_connection_in_step() {
    smol::block_on(async {
        let mut cluster = Cluster::local(1, &Default::default()).await.unwrap();
        let agent = &mut cluster.agents_mut()[0];
        let mut out = Vec::new();
        for n in [0usize, 1, 200_000, 0] {
            let data: Vec<f64> = (0..n).map(|i| i as f64 * 0.5 - 7.0).collect();
            agent
                .echo(Shape::List(n as u64), &data, &mut out)
                .await
                .unwrap();
            assert_eq!(out, data);
            agent.ping().await.unwrap();
        }
        let m: Vec<f64> = (0..300 * 301).map(f64::from).collect();
        agent
            .echo(
                Shape::Matrix {
                    rows: 300,
                    cols: 301,
                },
                &m,
                &mut out,
            )
            .await
            .unwrap();
        assert_eq!(out, m);
        cluster.close().await;
    });
}

#[test]
fn a_failed_request_marks_the_connection_broken() {
    smol::block_on(async {
        let mut cluster = Cluster::local(1, &Default::default()).await.unwrap();
        let agent = &mut cluster.agents_mut()[0];
        let mut out = Vec::new();
        // A shape that does not fit the data is refused before anything is
        // sent: the connection stays usable.
        let err = agent
            .echo(Shape::List(5), &[1.0], &mut out)
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Protocol { .. }), "{err}");
        agent.ping().await.unwrap();
        let mut raw = RawClient::open(agent).await.unwrap();
        let mut back = [0u8; 3];
        raw.echo(b"abc", &mut back).await.unwrap();
        assert_eq!(&back, b"abc");
        // A second raw echo is refused by the agent: the request fails, and
        // the connection is not trusted again.
        let err = RawClient::open(agent).await.unwrap_err();
        assert!(err.to_string().contains("already opened"), "{err}");
        let err = agent.ping().await.unwrap_err();
        assert!(matches!(err, ClientError::Broken { .. }), "{err}");
    });
}

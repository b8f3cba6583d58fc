//! Agents announce themselves over mDNS on 127.0.0.1 and the master finds
//! them; an agent that stops says goodbye and disappears.
//!
//! Every run uses fresh random ids and names, and looks only at the agents
//! it started, so parallel runs (and real agents on this host) do not
//! confuse it.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent};
use skelpi::discover::{DiscoverOptions, DiscoveredAgent, discover};
use skelpi_agent::announce::{Announcer, SERVICE_TYPE};
use skelpi_proto::{AgentInfo, PROTOCOL_VERSION};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Three agents of one run: distinct ids, names, ports, cores and arches.
fn agents() -> Vec<AgentInfo> {
    let run = format!("{:08x}", rand::random::<u32>());
    let arches = ["aarch64", "arm", "x86_64"];
    (0..3)
        .map(|i| AgentInfo {
            id: format!("{:016x}", rand::random::<u64>()),
            name: format!("it-{run}-{i}"),
            version: PROTOCOL_VERSION,
            arch: arches[i].to_owned(),
            cores: 2 + i as u32,
            memory_bytes: (1 + i as u64) << 30,
            // Nothing listens there: discovery only reads the announcement.
            port: 40_000 + rand::random::<u16>() % 20_000 + i as u16,
            kernels: Vec::new(),
            build: None,
            queued_per_worker: 0,
        })
        .collect()
}

fn announce(info: &AgentInfo) -> Announcer {
    Announcer::start(info, SocketAddr::new(LOCALHOST, info.port), &[]).expect("announce")
}

/// The discovered agents with the ids of `ours`, in the order of `ours`.
fn ours(found: &[DiscoveredAgent], ours: &[AgentInfo]) -> Vec<Option<DiscoveredAgent>> {
    ours.iter()
        .map(|info| found.iter().find(|a| a.info.id == info.id).cloned())
        .collect()
}

fn ids(found: &[DiscoveredAgent]) -> BTreeSet<&str> {
    found.iter().map(|a| a.info.id.as_str()).collect()
}

#[test]
fn master_finds_loopback_agents_and_forgets_stopped_ones() {
    let infos = agents();
    let mut announcers: Vec<Option<Announcer>> =
        infos.iter().map(|info| Some(announce(info))).collect();

    let opts = DiscoverOptions {
        timeout: Duration::from_secs(3),
        expect: Some(3),
        interface: Some("lo".into()),
    };
    let started = Instant::now();
    let mut found = discover(&opts).expect("discover");
    // Bounded: a browse of 3 s may overrun by the daemon's shutdown, not
    // by whole seconds (generous for a loaded 2-core CI machine).
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "discover overran its timeout: {:?}",
        started.elapsed()
    );
    if ours(&found, &infos).iter().any(Option::is_none) && ids(&found).len() >= 3 {
        // Agents of another run filled `expect` first: browse the full time.
        let all = DiscoverOptions {
            expect: None,
            ..opts
        };
        found = discover(&all).expect("discover");
    }

    for (info, agent) in infos.iter().zip(ours(&found, &infos)) {
        let agent = agent.unwrap_or_else(|| panic!("{} not discovered in {found:?}", info.name));
        assert_eq!(&agent.info, info, "TXT round trip over mDNS");
        assert_eq!(agent.instance, info.name);
        assert_eq!(agent.addrs, [LOCALHOST], "announced on 127.0.0.1 only");
        assert_eq!(agent.socket_addr(), SocketAddr::new(LOCALHOST, info.port));
    }
    let names: Vec<&str> = found.iter().map(|a| a.info.name.as_str()).collect();
    assert!(names.is_sorted(), "sorted by name: {names:?}");

    // Watch the first agent with a browser of our own, so that the goodbye
    // itself is what we observe (a fresh browse after the stop would not see
    // the agent even without one, since its daemon no longer answers).
    let gone = &infos[0];
    let fullname = announcers[0].as_ref().unwrap().fullname().to_owned();
    let watcher = ServiceDaemon::new().expect("watcher daemon");
    watcher
        .disable_interface(IfKind::All)
        .and_then(|()| watcher.enable_interface(IfKind::LoopbackV4))
        .expect("watch on loopback only");
    let events = watcher.browse(SERVICE_TYPE).expect("browse");
    await_event(
        &events,
        "resolution of the first agent",
        |event| matches!(event, ServiceEvent::ServiceResolved(s) if s.get_fullname().eq_ignore_ascii_case(&fullname)),
    );

    announcers[0].take().unwrap().stop().expect("stop");
    await_event(
        &events,
        "goodbye of the stopped agent",
        |event| matches!(event, ServiceEvent::ServiceRemoved(_, name) if name.eq_ignore_ascii_case(&fullname)),
    );
    watcher.shutdown().expect("shut down watcher");

    let after = discover(&DiscoverOptions {
        timeout: Duration::from_millis(1500),
        expect: None,
        interface: Some("lo".into()),
    })
    .expect("discover again");
    let after = ours(&after, &infos);
    assert!(
        after[0].is_none(),
        "{} still listed after goodbye",
        gone.name
    );
    assert!(
        after[1].is_some() && after[2].is_some(),
        "the others are still there"
    );

    for announcer in announcers.into_iter().flatten() {
        announcer.stop().expect("stop");
    }
}

/// Waits up to 3 s for an event that `wanted` accepts.
fn await_event(
    events: &mdns_sd::Receiver<ServiceEvent>,
    what: &str,
    wanted: impl Fn(&ServiceEvent) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or_else(|| panic!("no {what} within 3 s"));
        match events.recv_timeout(left) {
            Ok(event) if wanted(&event) => return,
            Ok(_) => {}
            Err(e) => panic!("no {what}: {e}"),
        }
    }
}

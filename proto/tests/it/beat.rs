//! The heartbeat rule (`skelpi_proto::beat`) on a clock the test moves.

use skelpi_proto::beat::*;
use std::time::{Duration, Instant};

const MS: Duration = Duration::from_millis(1);

#[test]
fn the_interval_is_bounded_and_zero_means_none() {
    assert_eq!(negotiate(0), None);
    assert_eq!(negotiate(1), Some(100 * MS));
    assert_eq!(negotiate(250), Some(250 * MS));
    assert_eq!(negotiate(u32::MAX), Some(60_000 * MS));
}

#[test]
fn a_peer_is_down_after_four_silent_beats_once_it_has_beaten() {
    let every = 100 * MS;
    assert!(
        !is_down(every, 0, 10_000 * MS),
        "never beat: its socket tells"
    );
    assert!(!is_down(every, 1, 399 * MS));
    assert!(is_down(every, 1, 400 * MS));
    assert!(!is_down(Duration::ZERO, 5, 10_000 * MS));
}

#[test]
fn beats_come_at_once_then_every_interval_without_bursts_after_a_delay() {
    let t0 = Instant::now();
    let mut b = Beats::new(100 * MS, t0);
    assert!(b.take_due(t0), "the first at once");
    assert!(!b.take_due(t0 + 99 * MS));
    assert!(b.take_due(t0 + 100 * MS));
    assert_eq!(b.next(), Some(t0 + 200 * MS));
    // Woken 1 s late: one beat, then the next a whole interval on.
    assert!(b.take_due(t0 + 1_200 * MS));
    assert!(!b.take_due(t0 + 1_250 * MS));
    assert_eq!(b.next(), Some(t0 + 1_300 * MS));
    // Other traffic postpones it.
    b.postpone(t0 + 1_280 * MS);
    assert_eq!(b.next(), Some(t0 + 1_380 * MS));
    let mut none = Beats::new(Duration::ZERO, t0);
    assert!(!none.take_due(t0 + 1_000 * MS));
    assert_eq!(none.next(), None);
}

//! The progress watchdog of every job. A job in which nothing has moved
//! for a bound — no result, no item through any stage or task — while its
//! agents still beat (a silent agent is lost sooner, by the heartbeats) is
//! stalled: it ends with [`JobError::Stalled`], saying where each part
//! stands, instead of leaving a silent terminal.
//!
//! # Implementation
//! [`watch`] looks at the job's counts every quarter bound. Counts only
//! grow, so two equal looks a bound apart mean nothing moved in between;
//! a look that differs starts the bound again. Looking may cost a round
//! trip (a streamed pipeline asks its stages' agents), so a look that sees
//! new results returns at once without asking.

use super::JobError;
use std::future::Future;
use std::time::{Duration, Instant};

/// How long a job may go without progress before it is stopped, unless
/// the caller sets another bound ([`crate::cluster::Cluster::set_stall_timeout`]).
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Where one part of a stalled job stood (a stage, or the tasks of one
/// kernel); `None` where it could not be known.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PartCounts {
    /// What it is: `stage 1 sleep_ms(8) on local-1`, `tasks of square`.
    pub name: String,
    /// Items that came into it.
    pub arrived: Option<u64>,
    /// Items it finished.
    pub done: Option<u64>,
    /// Results it passed on.
    pub sent: Option<u64>,
    /// Anything else worth saying: `input ended`, `finished`, `no answer`.
    pub note: String,
}

impl PartCounts {
    /// A part named `name` whose counts are unknown, with a note.
    pub fn unknown(name: String, note: &str) -> PartCounts {
        PartCounts {
            name,
            note: note.to_owned(),
            ..PartCounts::default()
        }
    }
}

impl std::fmt::Display for PartCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut said = Vec::new();
        if let Some(a) = self.arrived {
            said.push(format!("{a} in"));
        }
        if let Some(d) = self.done {
            said.push(format!("{d} done"));
        }
        if let Some(s) = self.sent {
            said.push(format!("{s} passed on"));
        }
        if let (Some(a), Some(d)) = (self.arrived, self.done) {
            said.push(format!("{} in flight", a.saturating_sub(d)));
        }
        if !self.note.is_empty() {
            said.push(self.note.clone());
        }
        write!(f, "{}: {}", self.name, said.join(", "))
    }
}

/// A job in which nothing moved for its bound.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stall {
    /// How long nothing moved.
    pub quiet: Duration,
    /// Inputs drawn (fed to the first stage).
    pub inputs: u64,
    /// Results handed to the caller.
    pub results: u64,
    /// Each part's counts, in order.
    pub parts: Vec<PartCounts>,
}

impl std::fmt::Display for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no progress for {:.1?} while the agents still beat: {} inputs drawn, {} results",
            self.quiet, self.inputs, self.results
        )?;
        for part in &self.parts {
            write!(f, "; {part}")?;
        }
        f.write_str(" (a kernel call that takes longer needs a longer stall timeout)")
    }
}

/// A job's counts at one look: what [`watch`] compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Look {
    /// Inputs drawn and results handed on.
    pub totals: (u64, u64),
    /// Each part's counts, if this look asked for them.
    pub parts: Option<Vec<PartCounts>>,
}

/// A watchdog's look this much later than asked: the master itself was
/// stalled (a tenth of the default silence before an agent is taken for
/// gone would be noise; a second is not).
pub const OWN_STALL: Duration = Duration::from_secs(1);

/// `bound`, or four of a feed's intervals `every` if longer: a job fed at
/// a set pace must not be taken for stalled between two items.
pub fn paced(bound: Option<Duration>, every: Option<Duration>) -> Option<Duration> {
    bound.map(|b| every.map_or(b, |every| b.max(every.saturating_mul(4))))
}

/// Returns the job's [`JobError::Stalled`] once two looks a `bound` apart
/// saw the same counts; never if `bound` is `None`. `look` is given the
/// totals of the look the bound runs from (`None`: none yet): if its own
/// differ, the job moved and it need not ask for the parts. A look that
/// comes [`OWN_STALL`] or more later than asked found this master itself
/// stalled (suspended, starved of CPU): the bound runs again from it, as
/// the job could not move meanwhile.
pub async fn watch<F, L>(bound: Option<Duration>, mut look: L) -> JobError
where
    L: FnMut(Option<(u64, u64)>) -> F,
    F: Future<Output = Look>,
{
    let Some(bound) = bound else {
        return std::future::pending().await;
    };
    let tick = (bound / 4).max(Duration::from_millis(10));
    // The look the bound runs from, and when it was taken.
    let mut since: Option<(Look, Instant)> = None;
    loop {
        let asked = Instant::now();
        async_io::Timer::after(tick).await;
        if asked.elapsed() >= tick + OWN_STALL {
            since = None;
        }
        let now = look(since.as_ref().map(|(l, _)| l.totals)).await;
        match &since {
            Some((before, at)) if *before == now => {
                if at.elapsed() >= bound {
                    let (inputs, results) = now.totals;
                    return JobError::Stalled(Box::new(Stall {
                        quiet: at.elapsed(),
                        inputs,
                        results,
                        parts: now.parts.unwrap_or_default(),
                    }));
                }
            }
            _ => since = Some((now, Instant::now())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn counts(done: u64) -> Vec<PartCounts> {
        vec![PartCounts {
            name: "stage 0".into(),
            arrived: Some(done + 1),
            done: Some(done),
            sent: Some(done),
            note: String::new(),
        }]
    }

    #[test]
    fn a_stall_of_the_master_itself_is_no_stall_of_the_job() {
        // Counts that never move; the thread stops for 1.3 s (as a
        // suspended master) while the watchdog waits for its look.
        let bound = Duration::from_millis(200);
        let watched = watch(Some(bound), |_| async {
            Look {
                totals: (1, 0),
                parts: Some(counts(0)),
            }
        });
        // After the first looks (every 50 ms), so the bound runs already.
        let stop_the_thread = async {
            async_io::Timer::after(Duration::from_millis(120)).await;
            std::thread::sleep(Duration::from_millis(1300));
            std::future::pending::<JobError>().await
        };
        let err = smol::block_on(futures_lite::future::or(watched, stop_the_thread));
        let JobError::Stalled(stall) = err else {
            panic!("{err}")
        };
        // The bound ran again from the resume: the quiet time is the
        // bound's, not the stop's.
        assert!(stall.quiet < Duration::from_secs(1), "{:?}", stall.quiet);
    }

    #[test]
    fn a_job_that_keeps_moving_is_never_stalled_and_one_that_stops_is_within_the_bound() {
        // Parts that move every look for 40 looks, then stop.
        let looks = Cell::new(0u64);
        let bound = Duration::from_millis(100);
        let started = Instant::now();
        let err = smol::block_on(watch(Some(bound), |_| {
            looks.set(looks.get() + 1);
            let done = looks.get().min(40);
            async move {
                Look {
                    totals: (50, 7),
                    parts: Some(counts(done)),
                }
            }
        }));
        let JobError::Stalled(stall) = err else {
            panic!("{err}")
        };
        assert!(looks.get() >= 44, "it kept looking while parts moved");
        assert_eq!(stall.parts, counts(40));
        assert!(stall.quiet >= bound);
        // 40 looks of a quarter bound moving, then a bound and a look.
        assert!(started.elapsed() >= bound * 11, "{:?}", started.elapsed());
        let text = stall.to_string();
        assert!(
            text.contains(
                "50 inputs drawn, 7 results; stage 0: 41 in, 40 done, 40 passed on, 1 in flight"
            ),
            "{text}"
        );
    }

    #[test]
    fn parts_are_asked_for_only_while_no_result_comes() {
        let asked = Cell::new(Vec::new());
        let looks = Cell::new(0u64);
        let err = smol::block_on(watch(Some(Duration::from_millis(40)), |from| {
            looks.set(looks.get() + 1);
            // Results for 5 looks, then none.
            let totals = (9, looks.get().min(5));
            let ask = from == Some(totals);
            let mut a = asked.take();
            a.push(ask);
            asked.set(a);
            async move {
                Look {
                    totals,
                    parts: ask.then(|| counts(1)),
                }
            }
        }));
        let JobError::Stalled(stall) = err else {
            panic!("{err}")
        };
        assert_eq!(stall.parts, counts(1), "the parts as last asked");
        let asked = asked.take();
        assert!(asked[..5].iter().all(|&a| !a), "{asked:?}");
        assert!(asked[5..].iter().all(|&a| a), "{asked:?}");
    }
}

//! The leader's background scrub (anti-entropy, ARCHITECTURE.md "Scrub"): when it has nothing
//! to drain, it compares every TVIEW with its query in small key ranges, paced so that one pass
//! takes about `scrub_interval` and capped at `scrub_rows_per_second`; a difference counts as
//! drift (and is repaired) only once the queue applied everything committed before it was seen.

use super::run_spi;
use crate::gucs;
use crate::queue::drain;
use crate::queue::status::{self, DrainTarget};
use crate::queue::WorkerState;
use crate::refresh::scrub::{self, Candidate, Compared, Confirmed};
use crate::refresh::Locking;
use pgrx::prelude::*;
use std::time::{Duration, Instant};

/// Publishing a committed transaction's keys happens just after its commit became visible (at
/// AFTER_LOCKS): waiting this long after a comparison before taking the queue positions to
/// wait for makes sure the keys of every transaction the comparison saw are among them.
const SETTLE: Duration = Duration::from_secs(1);
/// How often the leader looks whether the queue reached those positions.
const POLL: Duration = Duration::from_millis(20);
/// Retry delay after a lock did not come within lock_timeout.
const LOCKED_RETRY: Duration = Duration::from_secs(1);
/// Lock failures in a row after which a TVIEW is left for the next pass.
const LOCKED_GIVE_UP: u32 = 10;
/// Confirmation rounds for keys that keep changing (writes in flight) before they are left for
/// the next pass.
const ROUNDS: u32 = 3;
/// Smallest and time span of one step: at least this many rows, about one second of the pace.
const MIN_STEP_ROWS: usize = 100;
const STEP_SPAN_S: f64 = 1.0;

/// What the drainer should do after asking the scrub.
pub enum Poll {
    /// The scrub is off.
    Off,
    /// It did one short step: look at the ring again before anything else.
    Worked,
    /// Nothing to do before this long (sleep at most that, publishes still wake the worker).
    Wait(Duration),
}

/// The rows per second a pass must keep to check `remaining_rows` in `remaining`, capped at
/// `cap` (0: no cap); and whether the cap still allows it.
pub fn pace(remaining_rows: u64, remaining: Duration, cap: u64) -> (f64, bool) {
    let needed = remaining_rows.max(1) as f64 / remaining.as_secs_f64().max(0.001);
    if cap > 0 && needed > cap as f64 {
        (cap as f64, false)
    } else {
        (needed, true)
    }
}

/// Rows to check in one step at `rate`: about a second's worth, at least `MIN_STEP_ROWS`
/// (cheaper per row), at most `batch` (one short transaction).
pub fn step_rows(rate: f64, batch: usize) -> usize {
    ((rate * STEP_SPAN_S).ceil() as usize)
        .max(MIN_STEP_ROWS)
        .min(batch.max(1))
}

/// Pause after a step that checked `checked` rows, so the pass keeps `rate`.
pub fn step_delay(checked: u64, rate: f64) -> Duration {
    if rate <= 0.0 || !rate.is_finite() {
        return Duration::ZERO;
    }
    Duration::from_secs_f64((checked as f64 / rate).min(3600.0))
}

struct Pass {
    started: Instant,
    tviews: Vec<(pg_sys::Oid, u64)>,
    index: usize,
    /// First key of the next range of `tviews[index]`; `None` once its last range was compared.
    from: Option<i64>,
    total_rows: u64,
    checked: u64,
    repaired: u64,
    /// Rows repaired in the current TVIEW during this pass.
    tview_drift: u64,
    locked: u32,
    busy: Duration,
}

/// Keys that differed, waiting until the queue applied everything committed before they did.
struct Pending {
    tview: pg_sys::Oid,
    found: Vec<Candidate>,
    not_before: Instant,
    target: Option<DrainTarget>,
    round: u32,
    locked: u32,
}

#[derive(Default)]
pub struct Scrub {
    pass: Option<Pass>,
    /// When the last pass started; the next one starts `scrub_interval` later (the setting as
    /// it is then, so a reload takes effect at once).
    last_pass_started: Option<Instant>,
    /// When the last step ended and how many rows it checked: the next one is due after as long
    /// as those rows take at the pace the pass needs now (so a reload applies at once).
    last_step: Option<(Instant, u64)>,
    /// After a lock timeout: not before this.
    retry_at: Option<Instant>,
    pending: Option<Pending>,
}

fn until(t: Instant) -> Duration {
    t.saturating_duration_since(Instant::now())
}

impl Scrub {
    /// One step if one is due (the leader calls this only with its ring empty).
    pub fn poll(&mut self, slot: usize, dboid: u32, locking: Locking) -> Poll {
        let Some(interval) = gucs::scrub_interval() else {
            *self = Scrub::default();
            return Poll::Off;
        };
        if self.pending.is_some() {
            return self.confirm(slot, dboid, locking);
        }
        let Some(pass) = self.pass.as_mut() else {
            if let Some(at) = self
                .last_pass_started
                .map(|t| t + interval)
                .filter(|at| *at > Instant::now())
            {
                return Poll::Wait(until(at));
            }
            return self.start_pass(slot, dboid, interval);
        };
        let (rate, _) = pace(
            pass.total_rows.saturating_sub(pass.checked),
            until(pass.started + interval),
            gucs::scrub_rows_per_second(),
        );
        let due = [
            self.retry_at,
            self.last_step
                .map(|(at, checked)| at + step_delay(checked, rate)),
        ]
        .into_iter()
        .flatten()
        .max();
        if let Some(at) = due.filter(|at| *at > Instant::now()) {
            return Poll::Wait(until(at));
        }
        self.retry_at = None;
        if pass.index >= pass.tviews.len() {
            let pass = self.pass.take().expect("a pass");
            if pass.tviews.is_empty() {
                return Poll::Wait(until(pass.started + interval));
            }
            log!(
                "pg_tviews_bgw: scrub pass of database {dboid} done: {} TVIEWs, {} rows checked in {:.1} s ({} ms of work, {:.0} rows/s of work), {} drifted rows repaired",
                pass.tviews.len(),
                pass.checked,
                pass.started.elapsed().as_secs_f64(),
                pass.busy.as_millis(),
                pass.checked as f64 / pass.busy.as_secs_f64().max(0.001),
                pass.repaired
            );
            return Poll::Wait(until(pass.started + interval));
        }
        let (oid, _) = pass.tviews[pass.index];
        super::set_state(slot, WorkerState::Scrubbing);
        let Some(from) = pass.from else {
            // Every range of this TVIEW compared and confirmed: record the pass.
            let drift = pass.tview_drift;
            if let Err(e) = run_spi(|| scrub::finish_tview(oid, drift)) {
                warning!("pg_tviews_bgw: recording the scrub of TVIEW oid {oid:?} failed: {e}");
            }
            pass.next_tview();
            return Poll::Worked;
        };
        let rows = step_rows(rate, gucs::batch_size());
        let started = Instant::now();
        drain::set_current_tview(slot, oid.to_u32());
        let result = run_spi(|| scrub::compare_range(oid, from, rows));
        drain::set_current_tview(slot, 0);
        pass.busy += started.elapsed();
        match result {
            Ok(Compared::Range {
                checked,
                candidates,
                next,
            }) => {
                pass.locked = 0;
                pass.checked += checked;
                pass.from = next;
                if !candidates.is_empty() {
                    self.pending = Some(Pending {
                        tview: oid,
                        found: candidates,
                        not_before: Instant::now() + SETTLE,
                        target: None,
                        round: 1,
                        locked: 0,
                    });
                }
                self.last_step = Some((Instant::now(), checked.max(1)));
            }
            Ok(Compared::Skipped(why)) => {
                debug1!("pg_tviews_bgw: scrub skips TVIEW oid {oid:?} this pass: {why}");
                pass.skip_tview();
            }
            Ok(Compared::Locked) => {
                pass.locked += 1;
                if pass.locked >= LOCKED_GIVE_UP {
                    log!("pg_tviews_bgw: scrub leaves TVIEW oid {oid:?} for the next pass: still locked after {LOCKED_GIVE_UP} attempts");
                    pass.skip_tview();
                } else {
                    self.retry_at = Some(Instant::now() + LOCKED_RETRY);
                }
            }
            Ok(Compared::Failed(e)) => {
                log!(
                    "pg_tviews_bgw: scrub of TVIEW oid {oid:?} failed, left for the next pass: {e}"
                );
                pass.skip_tview();
            }
            Err(e) => {
                log!(
                    "pg_tviews_bgw: scrub of TVIEW oid {oid:?} failed, left for the next pass: {e}"
                );
                pass.skip_tview();
            }
        }
        Poll::Worked
    }

    fn start_pass(&mut self, slot: usize, dboid: u32, interval: Duration) -> Poll {
        super::set_state(slot, WorkerState::Scrubbing);
        let tviews = match run_spi(scrub::pass_plan) {
            Ok(tviews) => tviews,
            Err(e) => {
                warning!("pg_tviews_bgw: planning a scrub pass failed: {e}");
                // Try again in a minute (or the interval, if shorter).
                let retry_in = interval.min(Duration::from_secs(60));
                let now = Instant::now();
                self.last_pass_started = Some(now.checked_sub(interval - retry_in).unwrap_or(now));
                return Poll::Worked;
            }
        };
        let now = Instant::now();
        let total_rows: u64 = tviews.iter().map(|(_, rows)| rows).sum();
        let cap = gucs::scrub_rows_per_second();
        if let (_, false) = pace(total_rows, interval, cap) {
            log!(
                "pg_tviews_bgw: the scrub of database {dboid} cannot meet scrub_interval = {} s: about {total_rows} TVIEW rows at scrub_rows_per_second = {cap} take {} s per pass",
                interval.as_secs(),
                total_rows / cap.max(1)
            );
        }
        self.last_pass_started = Some(now);
        self.pass = Some(Pass {
            started: now,
            tviews,
            index: 0,
            from: Some(i64::MIN),
            total_rows,
            checked: 0,
            repaired: 0,
            tview_drift: 0,
            locked: 0,
            busy: Duration::ZERO,
        });
        self.last_step = None;
        self.retry_at = None;
        Poll::Worked
    }

    /// Confirms and repairs the pending keys once the queue applied everything committed before
    /// they were found.
    fn confirm(&mut self, slot: usize, dboid: u32, locking: Locking) -> Poll {
        let pending = self.pending.as_mut().expect("pending keys");
        if pending.not_before > Instant::now() {
            return Poll::Wait(until(pending.not_before));
        }
        let target = match pending.target {
            Some(target) => target,
            None => match status::drain_target(dboid) {
                Some(target) => *pending.target.insert(target),
                None => {
                    self.pending = None;
                    return Poll::Worked;
                }
            },
        };
        if !status::drained(&target) {
            return Poll::Wait(POLL);
        }
        super::set_state(slot, WorkerState::Scrubbing);
        let oid = pending.tview;
        let found = std::mem::take(&mut pending.found);
        drain::set_current_tview(slot, oid.to_u32());
        let started = Instant::now();
        let result = run_spi(|| scrub::confirm_and_repair(oid, &found, locking));
        drain::set_current_tview(slot, 0);
        if let Some(pass) = self.pass.as_mut() {
            pass.busy += started.elapsed();
        }
        let mut next = None;
        match result {
            Ok(Confirmed::Done {
                repaired,
                unsettled,
            }) => {
                if repaired > 0 {
                    let name = run_spi(|| scrub::oid_name(oid))
                        .unwrap_or_else(|_| oid.to_u32().to_string());
                    warning!(
                        "pg_tviews_bgw: scrub repaired {repaired} drifted row(s) of TVIEW {name}: they differed from its query although every committed change was applied (a capture gap, or a write behind the extension's back); see pg_tviews_explain('{name}')"
                    );
                    if let Some(pass) = self.pass.as_mut() {
                        pass.repaired += repaired;
                        if pass.tviews.get(pass.index).map(|t| t.0) == Some(oid) {
                            pass.tview_drift += repaired;
                        }
                    }
                }
                if !unsettled.is_empty() && pending.round < ROUNDS {
                    next = Some(Pending {
                        tview: oid,
                        found: unsettled,
                        not_before: Instant::now() + SETTLE,
                        target: None,
                        round: pending.round + 1,
                        locked: 0,
                    });
                }
            }
            Ok(Confirmed::Locked) if pending.locked + 1 < LOCKED_GIVE_UP => {
                next = Some(Pending {
                    tview: oid,
                    found,
                    not_before: Instant::now() + LOCKED_RETRY,
                    target: None,
                    round: pending.round,
                    locked: pending.locked + 1,
                });
            }
            Ok(Confirmed::Locked) => {
                log!("pg_tviews_bgw: scrub leaves differing rows of TVIEW oid {oid:?} for the next pass: still locked after {LOCKED_GIVE_UP} attempts");
            }
            Ok(Confirmed::Skipped(why)) => {
                debug1!("pg_tviews_bgw: scrub does not confirm TVIEW oid {oid:?}: {why}");
            }
            Ok(Confirmed::Failed(e)) => {
                log!("pg_tviews_bgw: scrub repair of TVIEW oid {oid:?} failed, left for the next pass: {e}");
            }
            Err(e) => {
                log!("pg_tviews_bgw: scrub repair of TVIEW oid {oid:?} failed, left for the next pass: {e}");
            }
        }
        self.pending = next;
        Poll::Worked
    }
}

impl Pass {
    fn next_tview(&mut self) {
        self.index += 1;
        self.from = Some(i64::MIN);
        self.tview_drift = 0;
        self.locked = 0;
    }

    /// Moves on without recording a pass over this TVIEW (`last_scrubbed_at` stays).
    fn skip_tview(&mut self) {
        if let Some((_, rows)) = self.tviews.get(self.index) {
            self.checked += rows;
        }
        self.next_tview();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_spreads_a_pass_over_the_interval_and_reports_an_impossible_one() {
        let (rate, ok) = pace(86_400, Duration::from_secs(86_400), 1_000);
        assert!(ok);
        assert!((rate - 1.0).abs() < 1e-9);
        let (rate, ok) = pace(10_000_000, Duration::from_secs(60), 1_000);
        assert!(!ok);
        assert_eq!(rate, 1_000.0);
        // No cap: whatever the interval needs; past the deadline, as fast as idle time allows.
        let (rate, ok) = pace(1_000, Duration::ZERO, 0);
        assert!(ok && rate >= 1_000_000.0);
    }

    #[test]
    fn steps_are_about_a_second_bounded_by_the_batch() {
        assert_eq!(step_rows(1.0, 1_000), MIN_STEP_ROWS);
        assert_eq!(step_rows(450.2, 1_000), 451);
        assert_eq!(step_rows(1e9, 1_000), 1_000);
        assert_eq!(step_rows(1e9, 10), 10);
        assert_eq!(step_delay(100, 1.0), Duration::from_secs(100));
        assert_eq!(step_delay(500, 1_000.0), Duration::from_millis(500));
        assert_eq!(step_delay(5, 0.0), Duration::ZERO);
    }
}

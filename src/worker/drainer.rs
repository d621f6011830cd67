//! The drainer: one dynamic background worker per database with the extension. It owns one
//! ring, refreshes TVIEW rows in batches, and consumes keys only after their refresh commits.
//! State machine: ARCHITECTURE.md "Drainer state machine".

use super::{exit_requested, planner, rate, reload_config_if_asked, run_in_transaction};
use crate::queue::{self, Attach, WorkerState};
use crate::{catalog, gucs, refresh};
use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;
use std::time::{Duration, Instant};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_tviews_bgw_drainer_main(arg: pg_sys::Datum) {
    // SAFETY: the launcher registers us with the database OID as a by-value datum.
    let dboid = unsafe { pg_sys::Oid::from_datum(arg, false) }.unwrap_or(pg_sys::InvalidOid);
    let slot: usize = BackgroundWorker::get_extra().parse().unwrap_or(usize::MAX);
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);

    // SAFETY: MyProcPid and MyLatch are set for every background worker before its main runs.
    let (pid, latch) = unsafe { (pg_sys::MyProcPid, pg_sys::MyLatch) };
    let probing = match queue::drainer_attach(slot, dboid.to_u32(), pid, latch) {
        Attach::Attached { probing } => probing,
        // The slot belongs to someone else now; exit 0 so the postmaster forgets this worker.
        Attach::Stale => exit(0),
    };
    // SAFETY: registering a static callback with a by-value argument.
    unsafe { pg_sys::before_shmem_exit(Some(on_exit), pg_sys::Datum::from(slot)) };
    DETACH.with(|d| d.set(Some((slot, dboid.to_u32()))));

    BackgroundWorker::connect_worker_to_spi_by_oid(Some(dboid), None);
    // The drainer runs the same few kept plans with a different key array each time; custom
    // plans re-plan on every batch (measured: planning costs more than executing), while the
    // generic plan uses the same index scans.
    // SAFETY: setting a user-level GUC for this process only, outside any transaction.
    unsafe {
        pg_sys::SetConfigOption(
            c"plan_cache_mode".as_ptr(),
            c"force_generic_plan".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
        );
    }
    let installed = run_in_transaction(catalog::extension_installed).unwrap_or(false);
    if !installed {
        if probing && queue::release_if_probing(slot, dboid.to_u32()) {
            DETACH.with(|d| d.set(None));
            exit(0);
        }
        if !probing {
            leave_for_good(slot, dboid.to_u32());
        }
        // Claimed for real while we looked (CREATE EXTENSION just committed): stay.
    }
    if probing {
        queue::drainer_confirm(slot, dboid.to_u32());
    }
    log!(
        "pg_tviews_bgw worker started for database {} (slot {slot})",
        dboid.to_u32()
    );
    Drainer::new(slot, dboid.to_u32()).run()
}

thread_local! {
    /// What `on_exit` must detach; cleared when the slot was already released.
    static DETACH: std::cell::Cell<Option<(usize, u32)>> = const { std::cell::Cell::new(None) };
}

#[pg_guard]
unsafe extern "C-unwind" fn on_exit(_code: i32, _arg: pg_sys::Datum) {
    if let Some((slot, dboid)) = DETACH.with(|d| d.take()) {
        // Keep the slot (and its queued keys) for the restarted worker.
        queue::drainer_detach(slot, dboid, false);
    }
}

fn exit(code: i32) -> ! {
    // SAFETY: proc_exit runs the registered exit callbacks and never returns.
    unsafe { pg_sys::proc_exit(code) }
}

/// Releases the slot and exits with 0, which tells the postmaster not to restart us.
fn leave_for_good(slot: usize, dboid: u32) -> ! {
    DETACH.with(|d| d.set(None));
    queue::drainer_detach(slot, dboid, true);
    exit(0)
}

struct Drainer {
    slot: usize,
    dboid: u32,
    failures: u32,
    next_retry: Option<Instant>,
    bucket: rate::TokenBucket,
    planner: planner::BatchPlanner,
    started: Instant,
}

/// How often deferred keys (failed, or parked by a paused TVIEW) are checked.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

impl Drainer {
    fn new(slot: usize, dboid: u32) -> Drainer {
        Drainer {
            slot,
            dboid,
            failures: 0,
            next_retry: None,
            bucket: rate::TokenBucket::new(gucs::MAX_ROWS_PER_SECOND.get().max(0) as u64, 0),
            planner: planner::BatchPlanner::new(gucs::batch_size()),
            started: Instant::now(),
        }
    }

    /// The token bucket's clock: microseconds since this worker started.
    fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    fn run(mut self) -> ! {
        loop {
            if queue::stop_requested(self.slot) {
                log!(
                    "pg_tviews_bgw worker for database {} stopping on request",
                    self.dboid
                );
                leave_for_good(self.slot, self.dboid);
            }
            if exit_requested() {
                // pg_terminate_backend or shutdown: exit 1 so the postmaster restarts us.
                exit(1);
            }
            reload_config_if_asked();
            if !gucs::ENABLED.get() {
                queue::set_state(self.slot, WorkerState::Disabled);
                self.sleep(gucs::naptime());
                continue;
            }
            let now = self.now_us();
            self.bucket
                .set_rate(gucs::MAX_ROWS_PER_SECOND.get().max(0) as u64, now);
            let limit = self.planner.limit(gucs::batch_size());
            let allowed = self.bucket.grant(limit as u64, now) as usize;
            if allowed == 0 {
                queue::set_state(self.slot, WorkerState::RateLimited);
                let wait = Duration::from_micros(self.bucket.wait_us(now).max(1_000));
                self.sleep(wait.min(gucs::naptime()));
                continue;
            }
            let batch = queue::next_batch(self.slot, allowed);
            if batch.full_refresh {
                queue::set_state(self.slot, WorkerState::FullRefresh);
                match run_in_transaction(refresh::apply_full) {
                    Ok(Ok(outcome)) => {
                        self.completed(&[], batch.covers, &outcome, true);
                    }
                    failure => {
                        queue::requeue_full_refresh(self.slot);
                        self.failed(describe(failure));
                    }
                }
                continue;
            }
            if self.next_retry.is_none_or(|t| Instant::now() >= t) {
                self.next_retry = Some(Instant::now() + RETRY_INTERVAL);
                self.retry_deferred();
            }
            if batch.entries.is_empty() {
                queue::set_state(self.slot, WorkerState::Idle);
                self.sleep(gucs::naptime());
                // Cheap catalog probe: notices DROP EXTENSION within one naptime.
                if matches!(run_in_transaction(catalog::extension_installed), Ok(false)) {
                    log!(
                        "pg_tviews_bgw extension dropped in database {}; worker exiting",
                        self.dboid
                    );
                    leave_for_good(self.slot, self.dboid);
                }
                continue;
            }
            // SAFETY: reading the clock cannot raise.
            let now_ts = unsafe { pg_sys::GetCurrentTimestamp() };
            let oldest_age = now_ts - batch.entries[0].committed_at;
            let coalesce_us = i64::from(gucs::COALESCE_MS.get()) * 1000;
            if let Some(wait) =
                planner::coalesce_wait_us(batch.queued, gucs::batch_size(), oldest_age, coalesce_us)
            {
                self.sleep(Duration::from_micros(wait.max(100) as u64));
                continue;
            }
            queue::set_state(self.slot, WorkerState::Draining);
            let entries = batch.entries;
            let batch_started = Instant::now();
            match run_in_transaction(|| refresh::apply_batch(&entries, refresh::OnError::Defer)) {
                Ok(Ok(outcome)) => {
                    let now = self.now_us();
                    self.bucket.spend(entries.len() as u64, now);
                    self.planner.observe(
                        entries.len(),
                        batch_started.elapsed().as_millis() as u64,
                        gucs::MAX_BATCH_MS.get().max(0) as u64,
                        gucs::batch_size(),
                    );
                    let lags: Vec<(u32, i64)> = entries
                        .iter()
                        .map(|e| (e.tview_oid, e.committed_at))
                        .collect();
                    self.completed(&lags, entries.len() as u64, &outcome, false)
                }
                failure => self.failed(describe(failure)),
            }
        }
    }

    /// The refresh transaction committed: consume its entries. TVIEWs that failed inside it
    /// were deferred to pg_tview_deferred; their error is shown but nothing is retried here.
    fn completed(
        &mut self,
        lags: &[(u32, i64)],
        consumed: u64,
        outcome: &refresh::Outcome,
        full_refresh: bool,
    ) {
        queue::complete_batch(
            self.slot,
            self.dboid,
            queue::Completed {
                lags,
                consumed,
                rows: outcome.rows,
                applied: &outcome.per_tview,
                failed: &outcome.failed,
                full_refresh,
            },
        );
        self.failures = 0;
        if let Some(error) = &outcome.last_error {
            queue::note_error(self.slot, error);
            warning!("pg_tviews_bgw worker for database {}: refresh failed, keys deferred for retry: {error}", self.dboid);
        }
    }

    /// Retries deferred keys that are due (own transaction; failures stay in the table).
    fn retry_deferred(&mut self) {
        let limit = gucs::batch_size();
        let max_retries = gucs::MAX_RETRIES.get();
        match run_in_transaction(|| refresh::retry_deferred(limit, max_retries)) {
            Ok(Ok(outcome)) => {
                if !outcome.per_tview.is_empty() || !outcome.failed.is_empty() {
                    self.completed(&[], 0, &outcome, false);
                }
            }
            failure => {
                let message = describe(failure);
                queue::note_error(self.slot, &message);
                warning!("pg_tviews_bgw worker for database {}: retry of deferred keys failed: {message}", self.dboid);
            }
        }
    }

    /// The batch stays queued; wait with exponential backoff before retrying it.
    fn failed(&mut self, message: String) {
        self.failures = self.failures.saturating_add(1);
        queue::record_error(self.slot, &message);
        warning!(
            "pg_tviews_bgw worker for database {}: refresh failed (attempt {}), will retry: {message}",
            self.dboid,
            self.failures
        );
        let backoff = BACKOFF_MIN
            .saturating_mul(1u32 << self.failures.min(16))
            .min(BACKOFF_MAX);
        self.sleep_until(Instant::now() + backoff);
    }

    fn sleep(&self, timeout: Duration) {
        if !BackgroundWorker::wait_latch(Some(timeout)) {
            self.exit_or_leave();
        }
    }

    /// Sleeps through latch wake-ups (publishes) until `deadline`.
    fn sleep_until(&self, deadline: Instant) {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            self.sleep(deadline - now);
            if queue::stop_requested(self.slot) {
                return;
            }
        }
    }

    fn exit_or_leave(&self) -> ! {
        if queue::stop_requested(self.slot) {
            leave_for_good(self.slot, self.dboid);
        }
        exit(1)
    }
}

fn describe<T>(failure: Result<spi::Result<T>, String>) -> String {
    match failure {
        Ok(Ok(_)) => String::new(),
        Ok(Err(e)) => e.to_string(),
        Err(message) => message,
    }
}

//! The drainer: a dynamic background worker draining one partition (ring) of one database.
//! It refreshes TVIEW rows in batches and consumes keys only after their refresh committed.
//! Partition 0, the leader, also runs recoveries (journal replay or full reconcile), retries
//! deferred keys and rotates the journal. State machine: ARCHITECTURE.md "Drainer state machine".

use super::{
    exit_requested, planner, rate, reload_config_if_asked, run_in_transaction, run_spi, scrub,
};
use crate::gucs::{self, Durability};
use crate::queue::drain::{self, RecoveryTicket};
use crate::queue::slots::{self, Attach, SlotStatus};
use crate::queue::{tokens, QueueEntry, WorkerState};
use crate::{catalog, refresh};
use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;
use std::time::{Duration, Instant};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// While write tokens are being waited for (one was served in the last `TOKENS_RECENT`), ring
/// batches are sized to take about `token_batch_ms`: a token's keys wait for at most one such
/// batch before the priority lane takes them.
const TOKENS_RECENT: Duration = Duration::from_secs(10);
/// Rounds of the priority lane per call: each round applies what the previous one cascaded to.
const TOKEN_ROUNDS: usize = 8;
/// How often deferred keys (failed, paused, prepared) are checked by the leader.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// `bgw_extra` of a drainer: `<slot>:<generation>`.
pub fn registration_extra(slot: usize, generation: u64) -> String {
    format!("{slot}:{generation}")
}

fn parse_extra(extra: &str) -> Option<(usize, u64)> {
    let (slot, generation) = extra.split_once(':')?;
    Some((slot.parse().ok()?, generation.parse().ok()?))
}

#[pg_guard]
// SAFETY: no other symbol of the process has this name; the postmaster looks the entry
// point up by it (`bgw_function_name`).
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_tviews_bgw_drainer_main(arg: pg_sys::Datum) {
    // SAFETY: the launcher registers us with the database OID as a by-value datum.
    let dboid = unsafe { pg_sys::Oid::from_datum(arg, false) }
        .unwrap_or(pg_sys::InvalidOid)
        .to_u32();
    let Some((slot, generation)) = parse_extra(BackgroundWorker::get_extra()) else {
        exit(0)
    };
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    super::reload_config_at_start();
    // pgrx's SIGTERM handler only sets a flag, which a long refresh statement would not look at
    // until it finished: fast shutdown and pg_terminate_backend would wait for it. PostgreSQL's
    // own handler makes the running statement stop at its next interrupt check (FATAL, exit 1,
    // the batch stays queued; the postmaster restarts us unless it is shutting down).
    crate::pg::die_on_sigterm();

    // SAFETY: MyProcPid and MyLatch are set for every background worker before its main runs.
    let (pid, latch) = unsafe { (pg_sys::MyProcPid, pg_sys::MyLatch) };
    let (probing, partition, partitions) =
        match slots::drainer_attach(slot, dboid, generation, pid, latch) {
            Attach::Attached {
                probing,
                partition,
                partitions,
            } => (probing, partition, partitions),
            // The slot belongs to someone else now; exit 0 so the postmaster forgets us.
            Attach::Stale => exit(0),
        };
    // SAFETY: registering a static callback with a by-value argument.
    unsafe { pg_sys::before_shmem_exit(Some(on_exit), pg_sys::Datum::from(slot)) };
    DETACH.with(|d| d.set(Some((slot, dboid, generation))));

    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(dboid)), None);
    // The drainer runs the same few kept plans with a different key array each time; custom
    // plans re-plan on every batch (measured: planning costs more than executing), while the
    // generic plan uses the same index scans.
    set_option(c"plan_cache_mode", c"force_generic_plan");
    // A database made read-only (default_transaction_read_only) must not stop the worker from
    // recording what it could not apply: its session is read-write, and its refreshes honour
    // the setting by failing with 25006 (refresh::note_read_only), retried, then dead letters.
    set_option(c"default_transaction_read_only", c"off");
    // Every refresh statement takes a snapshot of its own, after the locks that order it after
    // sync-mode writers (refresh::locks): a configured REPEATABLE READ would read older ones.
    set_option(c"default_transaction_isolation", c"read committed");
    refresh::locks::mark_worker();
    let schema = run_in_transaction(catalog::extension_schema).unwrap_or(None);
    let Some(schema) = schema else {
        if probing && slots::release_if_probing(slot, dboid, generation) {
            DETACH.with(|d| d.set(None));
            exit(0);
        }
        if !probing {
            leave_for_good(slot, dboid, generation);
        }
        // Claimed for real while we looked (CREATE EXTENSION just committed): restart and
        // look again.
        exit(1)
    };
    // Everything the worker runs names the extension's tables unqualified: pin the path so no
    // other schema (e.g. one named like the worker's user) can shadow them.
    let path = std::ffi::CString::new(format!(
        "pg_catalog, {}",
        pgrx::spi::quote_identifier(&schema)
    ))
    .unwrap_or_else(|_| c"pg_catalog".to_owned());
    set_option(c"search_path", &path);
    if probing {
        slots::drainer_confirm(slot, dboid, generation);
    }
    log!("pg_tviews_bgw worker started for database {dboid} (partition {partition} of {partitions}, slot {slot})");
    Drainer::new(slot, dboid, generation, partition, partitions).run()
}

fn set_option(name: &std::ffi::CStr, value: &std::ffi::CStr) {
    // SAFETY: sets a user-level GUC for this process only, outside any transaction.
    unsafe {
        pg_sys::SetConfigOption(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
        );
    }
}

thread_local! {
    /// What `on_exit` must detach; cleared when the slot was already released.
    static DETACH: std::cell::Cell<Option<(usize, u32, u64)>> = const { std::cell::Cell::new(None) };
}

/// # Safety
/// Registered with `before_shmem_exit`; PostgreSQL calls it once at process exit, while
/// shared memory is still attached.
#[pg_guard]
unsafe extern "C-unwind" fn on_exit(_code: i32, _arg: pg_sys::Datum) {
    if let Some((slot, dboid, generation)) = DETACH.with(|d| d.take()) {
        // Keep the slot (and its queued keys) for the restarted worker.
        slots::drainer_detach(slot, dboid, generation, false);
    }
}

fn exit(code: i32) -> ! {
    crate::pg::proc_exit(code)
}

/// Releases the database's slots and exits with 0, which tells the postmaster not to restart us.
fn leave_for_good(slot: usize, dboid: u32, generation: u64) -> ! {
    DETACH.with(|d| d.set(None));
    slots::drainer_detach(slot, dboid, generation, true);
    exit(0)
}

struct Drainer {
    slot: usize,
    dboid: u32,
    generation: u64,
    leader: bool,
    partitions: u32,
    failures: u32,
    next_retry: Option<Instant>,
    bucket: rate::TokenBucket,
    planner: planner::BatchPlanner,
    /// Batch sizing under `TOKEN_BATCH_MS`, used while tokens are recent.
    token_planner: planner::BatchPlanner,
    tokens_served_at: Option<Instant>,
    started: Instant,
    /// The leader's background scrub (worker/scrub.rs).
    scrub: scrub::Scrub,
}

impl Drainer {
    fn new(slot: usize, dboid: u32, generation: u64, partition: u32, partitions: u32) -> Drainer {
        let mut drainer = Drainer {
            slot,
            dboid,
            generation,
            leader: partition == 0,
            partitions: partitions.max(1),
            failures: 0,
            next_retry: None,
            bucket: rate::TokenBucket::new(0, 0),
            planner: planner::BatchPlanner::new(gucs::batch_size()),
            token_planner: planner::BatchPlanner::new(gucs::batch_size()),
            tokens_served_at: None,
            started: Instant::now(),
            scrub: scrub::Scrub::default(),
        };
        drainer.bucket = rate::TokenBucket::new(drainer.rate(), 0);
        drainer
    }

    /// This partition's share of the database's `max_rows_per_second`.
    fn rate(&self) -> u64 {
        let total = gucs::max_rows_per_second();
        total.div_ceil(u64::from(self.partitions))
    }

    /// The token bucket's clock: microseconds since this worker started.
    fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    fn locking(&self) -> refresh::Locking {
        if self.partitions > 1 {
            refresh::Locking::Partitioned
        } else {
            refresh::Locking::Alone
        }
    }

    /// Waits for the rate limit to grant at least one of `wanted` keys; returns the grant.
    fn take_tokens(&mut self, wanted: usize) -> usize {
        loop {
            let now = self.now_us();
            self.bucket.set_rate(self.rate(), now);
            let allowed = self.bucket.grant(wanted as u64, now) as usize;
            if allowed > 0 {
                return allowed;
            }
            super::set_state(self.slot, WorkerState::RateLimited);
            let wait = Duration::from_micros(self.bucket.wait_us(now).max(1_000));
            self.sleep(wait.min(gucs::naptime()));
            // Woken by a token (or the wait is over): waiters do not queue behind the limit.
            if self.leader {
                self.serve_tokens();
            }
        }
    }

    fn check_slot(&self) {
        match slots::slot_status(self.slot, self.dboid, self.generation) {
            SlotStatus::Mine => {}
            SlotStatus::StopRequested => {
                log!(
                    "pg_tviews_bgw worker for database {} stopping on request",
                    self.dboid
                );
                leave_for_good(self.slot, self.dboid, self.generation);
            }
            SlotStatus::Gone => {
                DETACH.with(|d| d.set(None));
                exit(0);
            }
        }
        if exit_requested() {
            // pg_terminate_backend or shutdown: exit 1 so the postmaster restarts us.
            exit(1);
        }
    }

    fn run(mut self) -> ! {
        loop {
            self.check_slot();
            reload_config_if_asked();
            if !gucs::enabled() {
                super::set_state(self.slot, WorkerState::Disabled);
                self.sleep(gucs::naptime());
                continue;
            }
            if self.leader {
                self.serve_tokens();
                if gucs::durability() == Durability::Journal {
                    self.maintain_journal();
                }
                if let Some(ticket) = drain::recovery_due(self.slot) {
                    self.recover(&ticket);
                    continue;
                }
                if self.next_retry.is_none_or(|t| Instant::now() >= t) {
                    self.next_retry = Some(Instant::now() + RETRY_INTERVAL);
                    self.retry_deferred();
                }
            }
            let mut limit = self.planner.limit(gucs::batch_size());
            if self.tokens_recent() && gucs::token_batch_ms().is_some() {
                limit = limit.min(self.token_planner.limit(gucs::batch_size()));
            }
            let batch = drain::next_batch(self.slot, limit);
            if batch.entries.is_empty() {
                // Spare capacity: the leader scrubs, one short step at a time, and looks at its
                // ring again after each.
                let nap = if self.leader {
                    match self.scrub.poll(self.slot, self.dboid, self.locking()) {
                        scrub::Poll::Worked => continue,
                        scrub::Poll::Wait(wait) => {
                            wait.clamp(Duration::from_millis(1), gucs::naptime())
                        }
                        scrub::Poll::Off => gucs::naptime(),
                    }
                } else {
                    gucs::naptime()
                };
                if !drain::go_idle(self.slot) {
                    continue;
                }
                self.sleep(nap);
                // Cheap catalog probe: notices DROP EXTENSION within one naptime.
                if matches!(run_in_transaction(catalog::extension_installed), Ok(false)) {
                    log!(
                        "pg_tviews_bgw extension dropped in database {}; worker exiting",
                        self.dboid
                    );
                    leave_for_good(self.slot, self.dboid, self.generation);
                }
                continue;
            }
            let now_ts = crate::pg::now();
            let oldest_age = now_ts - batch.entries[0].committed_at;
            let coalesce_us = gucs::coalesce_us();
            if let Some(wait) =
                planner::coalesce_wait_us(batch.queued, gucs::batch_size(), oldest_age, coalesce_us)
            {
                self.sleep(Duration::from_micros(wait.max(100) as u64));
                continue;
            }
            let allowed = self.take_tokens(batch.entries.len());
            // A smaller grant than the batch: take it again with the grant as its size, so the
            // slots to consume match the keys refreshed.
            let batch = if allowed < batch.entries.len() {
                drain::next_batch(self.slot, allowed)
            } else {
                batch
            };
            super::set_state(self.slot, WorkerState::Draining);
            let locking = self.locking();
            match self.refresh_entries(&batch.entries, locking) {
                (Ok(outcome), elapsed_ms) => {
                    self.planner.observe(
                        batch.entries.len(),
                        elapsed_ms,
                        gucs::max_batch_ms(),
                        gucs::batch_size(),
                    );
                    if let Some(budget_ms) = gucs::token_batch_ms() {
                        self.token_planner.observe(
                            batch.entries.len(),
                            elapsed_ms,
                            budget_ms,
                            gucs::batch_size(),
                        );
                    }
                    let lags = lags_of(&batch.entries);
                    self.completed(&lags, (batch.start, batch.slots), &outcome, elapsed_ms)
                }
                (failure, _) => self.failed(describe(failure)),
            }
        }
    }

    fn tokens_recent(&self) -> bool {
        self.tokens_served_at
            .is_some_and(|at| at.elapsed() < TOKENS_RECENT)
    }

    /// The priority lane (leader only): refreshes the keys that `pg_tviews_wait(token)` callers
    /// wait for ahead of the ring, with their cascades (`serve_in_transaction`), then tokens
    /// that arrived meanwhile (at most `TOKEN_ROUNDS` transactions, then the ring gets its
    /// turn). The keys stay in the ring too and are refreshed again in order there: refresh is
    /// idempotent.
    fn serve_tokens(&mut self) {
        for _ in 0..TOKEN_ROUNDS {
            let (taken, keys) = tokens::take_pending(self.dboid, gucs::batch_size());
            if taken.is_empty() {
                return;
            }
            self.tokens_served_at = Some(Instant::now());
            super::set_state(self.slot, WorkerState::Draining);
            // The leader refreshes keys other partitions own: exclusive per-TVIEW locks.
            let locking = self.locking().for_foreign_keys();
            let started = Instant::now();
            let slot = self.slot;
            let result = run_spi(|| serve_in_transaction(&taken, &keys, locking, slot));
            let busy_ms = started.elapsed().as_millis() as u64;
            match result {
                Ok(outcome) => {
                    self.bucket.spend(keys.len() as u64, self.now_us());
                    // Rows and failures count; "applied" and the lag histograms stay the
                    // ring's, which applies these keys again.
                    drain::complete_batch(
                        self.slot,
                        self.dboid,
                        drain::Completed {
                            lags: &[],
                            start: 0,
                            slots: 0,
                            rows: outcome.rows,
                            applied: &[],
                            failed: &outcome.failed,
                            busy_ms,
                        },
                    );
                    if let Some(error) = &outcome.last_error {
                        drain::note_error(self.slot, error);
                    }
                }
                // The abort gave the keys back to their tokens (staging's ABORT callback).
                failure => {
                    self.failed(format!("priority refresh: {}", describe(failure)));
                    return;
                }
            }
        }
    }

    /// Refreshes `entries` in a transaction of their own; on success their keys are charged to
    /// the rate limit. Returns the result and how long the transaction took (ms).
    fn refresh_entries(
        &mut self,
        entries: &[QueueEntry],
        locking: refresh::Locking,
    ) -> (crate::errors::Result<refresh::Outcome>, u64) {
        let started = Instant::now();
        let slot = self.slot;
        let result = run_spi(|| {
            refresh::note_read_only();
            refresh::apply_batch(entries, refresh::OnError::Defer, locking, &|oid| {
                drain::set_current_tview(slot, oid)
            })
        });
        if result.is_ok() {
            self.bucket.spend(entries.len() as u64, self.now_us());
        }
        (result, started.elapsed().as_millis() as u64)
    }

    /// The refresh transaction committed: consume its entries. TVIEWs that failed inside it
    /// were deferred to pg_tview_deferred; their error is shown but nothing is retried here.
    fn completed(
        &mut self,
        lags: &[(u32, i64)],
        (start, slots): (u64, u64),
        outcome: &refresh::Outcome,
        busy_ms: u64,
    ) {
        drain::complete_batch(
            self.slot,
            self.dboid,
            drain::Completed {
                lags,
                start,
                slots,
                rows: outcome.rows,
                applied: &outcome.per_tview,
                failed: &outcome.failed,
                busy_ms,
            },
        );
        self.failures = 0;
        if let Some(error) = &outcome.last_error {
            drain::note_error(self.slot, error);
            warning!("pg_tviews_bgw worker for database {}: refresh failed, keys deferred for retry: {error}", self.dboid);
        }
    }

    /// Brings the database back to "every committed key applied" after shared memory lost
    /// keys (fresh start, crash) or a ring overflowed: replays the journal, or without one
    /// (or when it says some keys were never journaled) reconciles every TVIEW.
    fn recover(&mut self, ticket: &RecoveryTicket) {
        let journal = if gucs::durability() == Durability::Journal {
            super::set_state(self.slot, WorkerState::Replaying);
            match run_spi(crate::journal::replay::read) {
                Ok(entries) => Some(entries),
                failure => {
                    self.failed(format!("reading the journal: {}", describe(failure)));
                    return;
                }
            }
        } else {
            None
        };
        let complete = match journal {
            Some(entries) if !entries.iter().any(|e| e.tview_oid == 0) => {
                let done = self.replay(&entries);
                if done {
                    log!(
                        "pg_tviews_bgw: replayed {} journaled keys in database {}",
                        entries.len(),
                        self.dboid
                    );
                }
                done
            }
            Some(_) => self.reconcile_all("the journal says some keys were not journaled"),
            None => self.reconcile_all("durability = none"),
        };
        if complete {
            drain::complete_recovery(self.slot, ticket);
            super::set_state(self.slot, WorkerState::Idle);
            self.failures = 0;
        }
    }

    /// Applies journaled keys in batches (rate-limited like ring batches). False when a batch
    /// failed as a whole: the recovery stays due and starts over after the backoff.
    fn replay(&mut self, entries: &[QueueEntry]) -> bool {
        let mut next = 0;
        while next < entries.len() {
            self.check_slot();
            self.serve_tokens();
            let limit = self.planner.limit(gucs::batch_size());
            let wanted = limit.min(entries.len() - next);
            let allowed = self.take_tokens(wanted);
            super::set_state(self.slot, WorkerState::Replaying);
            let chunk = &entries[next..next + allowed];
            let locking = self.locking().for_foreign_keys();
            match self.refresh_entries(chunk, locking) {
                (Ok(outcome), elapsed_ms) => {
                    self.completed(&lags_of(chunk), (0, 0), &outcome, elapsed_ms);
                }
                (failure, _) => {
                    self.failed(format!("journal replay: {}", describe(failure)));
                    return false;
                }
            }
            next += chunk.len();
        }
        true
    }

    /// Recomputes every TVIEW of the database and writes only what differs, in key ranges of
    /// about `batch_size` keys, each its own short transaction (online: readers never wait,
    /// writers wait only for the rows of one range). A TVIEW whose recompute raises is deferred
    /// (retried like any failed key) and the others still reconcile.
    fn reconcile_all(&mut self, why: &str) -> bool {
        super::set_state(self.slot, WorkerState::FullRefresh);
        let tviews = match run_spi(|| pgrx::Spi::connect(catalog::all_tviews)) {
            Ok(tviews) => tviews,
            failure => {
                self.failed(format!("listing TVIEWs: {}", describe(failure)));
                return false;
            }
        };
        let count = tviews.len();
        for oid in tviews {
            let mut from = Some(i64::MIN);
            while let Some(start) = from {
                self.check_slot();
                self.serve_tokens();
                let batch = self.take_tokens(gucs::batch_size());
                super::set_state(self.slot, WorkerState::FullRefresh);
                let started = Instant::now();
                let locking = self.locking().for_foreign_keys();
                let result = run_spi(|| {
                    refresh::note_read_only();
                    refresh::reconcile_range(oid, start, batch, locking)
                });
                let elapsed_ms = started.elapsed().as_millis() as u64;
                match result {
                    Ok(refresh::Reconciled::Range { rows, next }) => {
                        self.bucket.spend(batch as u64, self.now_us());
                        let outcome = refresh::Outcome {
                            rows,
                            per_tview: vec![drain::Applied {
                                tview_oid: oid.to_u32(),
                                keys: 0,
                            }],
                            ..Default::default()
                        };
                        self.completed(&[], (0, 0), &outcome, elapsed_ms);
                        from = next;
                    }
                    Ok(refresh::Reconciled::Gone) => from = None,
                    Ok(refresh::Reconciled::Deferred(outcome)) => {
                        self.completed(&[], (0, 0), &outcome, elapsed_ms);
                        from = None;
                    }
                    failure => {
                        self.failed(format!("full reconcile: {}", describe(failure)));
                        return false;
                    }
                }
            }
        }
        log!(
            "pg_tviews_bgw: reconciled {count} TVIEWs in database {} ({why})",
            self.dboid
        );
        true
    }

    /// Seals, drains and truncates journal tables (PgQ-style rotation, no DELETE).
    fn maintain_journal(&mut self) {
        let interval_us = gucs::journal_rotate_interval_us();
        let Some(table) = drain::journal_maintain(self.slot, interval_us) else {
            return;
        };
        match run_spi(|| crate::journal::replay::truncate(table)) {
            Ok(true) => drain::journal_truncated(self.slot, table),
            // Busy (someone holds a lock on it): try again on the next pass.
            Ok(false) => {}
            failure => {
                let message = describe(failure);
                drain::note_error(self.slot, &message);
                warning!(
                    "pg_tviews_bgw worker for database {}: journal truncation failed: {message}",
                    self.dboid
                );
            }
        }
    }

    /// Retries deferred keys that are due (own transaction; failures stay in the table).
    fn retry_deferred(&mut self) {
        let limit = gucs::batch_size();
        let max_retries = gucs::max_retries();
        let locking = self.locking().for_foreign_keys();
        match run_spi(|| {
            refresh::note_read_only();
            refresh::retry_deferred(limit, max_retries, locking)
        }) {
            Ok(outcome) => {
                if !outcome.per_tview.is_empty() || !outcome.failed.is_empty() {
                    self.completed(&[], (0, 0), &outcome, 0);
                }
            }
            failure => {
                let message = describe(failure);
                drain::note_error(self.slot, &message);
                warning!("pg_tviews_bgw worker for database {}: retry of deferred keys failed: {message}", self.dboid);
            }
        }
    }

    /// The batch stays queued; wait with exponential backoff before retrying it.
    fn failed(&mut self, message: String) {
        // A batch or recovery that fails because the extension is gone (DROP EXTENSION, also
        // one that committed while this worker started): leave now rather than retry until
        // an idle check that a failing worker never reaches.
        if matches!(run_in_transaction(catalog::extension_installed), Ok(false)) {
            log!(
                "pg_tviews_bgw extension dropped in database {}; worker exiting",
                self.dboid
            );
            leave_for_good(self.slot, self.dboid, self.generation);
        }
        self.failures = self.failures.saturating_add(1);
        drain::record_error(self.slot, &message);
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
            self.check_slot();
            exit(1);
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
            self.check_slot();
        }
    }
}

/// One transaction of the priority lane: refreshes the tokens' keys, then (after each
/// statement's capture triggers staged them) the keys those refreshes cascaded to, round after
/// round in the same transaction, until no new key appears; the tokens are done when it
/// commits. A failed key, a cascade that cannot be followed key by key (`refresh::for_waiters`)
/// or one deeper than `TOKEN_ROUNDS` or wider than `batch_size` hands the tokens to the wait for
/// everything.
fn serve_in_transaction(
    taken: &[tokens::TokenRef],
    keys: &[QueueEntry],
    locking: refresh::Locking,
    slot: usize,
) -> pgrx::spi::Result<refresh::Outcome> {
    use crate::capture::staging;
    staging::serve_tokens(taken);
    refresh::note_read_only();
    let mut total = refresh::Outcome::default();
    let mut batch = keys.to_vec();
    let mut seen = staging::staged_keys();
    for round in 0.. {
        let (outcome, missed) = refresh::for_waiters(|| {
            refresh::apply_batch(&batch, refresh::OnError::Defer, locking, &|oid| {
                drain::set_current_tview(slot, oid)
            })
        });
        let outcome = outcome?;
        let failed = !outcome.failed.is_empty();
        total.merge(outcome);
        if failed {
            staging::served_tokens_failed();
            break;
        }
        if missed {
            staging::served_tokens_overflow();
            break;
        }
        let now = staging::staged_keys();
        batch = now
            .iter()
            .filter(|k| seen.binary_search(k).is_err())
            .map(|k| k.entry())
            .collect();
        seen = now;
        if batch.is_empty() {
            staging::served_tokens_complete();
            break;
        }
        if round + 1 >= TOKEN_ROUNDS || batch.len() > gucs::batch_size() {
            staging::served_tokens_overflow();
            break;
        }
    }
    Ok(total)
}

/// `(TVIEW, commit time)` of each refreshed key, for the lag histograms.
fn lags_of(entries: &[QueueEntry]) -> Vec<(u32, i64)> {
    entries
        .iter()
        .map(|e| (e.tview_oid, e.committed_at))
        .collect()
}

/// The error of a failed step, for the log and the slot's `last_error`.
fn describe<T>(failure: crate::errors::Result<T>) -> String {
    failure.err().map(|e| e.to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_extra_round_trips() {
        assert_eq!(parse_extra(&registration_extra(3, 77)), Some((3, 77)));
        assert_eq!(parse_extra("3"), None);
        assert_eq!(parse_extra("x:1"), None);
    }
}

//! Background workers: the static launcher and the per-database drainers, plus what both need
//! (signal handling, a transaction wrapper that survives SQL errors).

pub mod drainer;
pub mod launcher;
pub mod planner;
pub mod rate;
pub mod scrub;

use crate::errors;
use crate::queue::{drain, WorkerState};
use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::PgTryBuilder;
use std::panic::{AssertUnwindSafe, RefUnwindSafe, UnwindSafe};

/// Shows the drainer's step in its slot. A refused transition (`WorkerSlot::transition`: the
/// slot was released, or claimed again, under this worker) is logged and otherwise ignored:
/// the worker's next slot check makes it exit.
pub fn set_state(slot: usize, state: WorkerState) {
    if let Err(from) = drain::set_state(slot, state) {
        pgrx::warning!(
            "pg_tviews_bgw worker of slot {slot}: state change {} -> {} refused",
            from.label(),
            state.label()
        );
    }
}

/// True once SIGTERM arrived (pg_terminate_backend, shutdown). Reads PostgreSQL's own flag,
/// which pgrx's handler sets and never clears.
pub fn exit_requested() -> bool {
    // SAFETY: a volatile read of a sig_atomic_t flag.
    unsafe { (&raw const pg_sys::ShutdownRequestPending).read_volatile() != 0 }
}

/// Applies postgresql.conf changes after SIGHUP (pgrx's handler only sets the flag).
/// Reads the configuration files once at start: a reload that the postmaster signalled while
/// this process was being forked is lost (PostgreSQL ignores SIGHUP in a new background worker
/// until its main runs), and the values inherited at fork may predate it (e.g. a worker
/// started while `pg_tviews_bgw.enabled` was being switched back on would stay disabled).
pub fn reload_config_at_start() {
    // SAFETY: ProcessConfigFile from the worker's main, outside any transaction, as PostgreSQL's
    // own workers do on SIGHUP.
    unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
}

pub fn reload_config_if_asked() {
    // SAFETY: volatile flag access and ProcessConfigFile from the worker's main loop, outside
    // any transaction, as PostgreSQL's own workers do.
    unsafe {
        if (&raw const pg_sys::ConfigReloadPending).read_volatile() != 0 {
            (&raw mut pg_sys::ConfigReloadPending).write_volatile(0);
            let _ = BackgroundWorker::sighup_received();
            pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
        }
    }
}

/// Runs `body` in its own transaction. An ERROR (or Rust panic) inside is caught, the
/// transaction is aborted and the error returned with its SQLSTATE, so the worker survives
/// (invariant 5).
pub fn run_in_transaction<R>(
    body: impl FnOnce() -> R + UnwindSafe + RefUnwindSafe,
) -> errors::Result<R> {
    PgTryBuilder::new(AssertUnwindSafe(|| Ok(BackgroundWorker::transaction(body))))
        .catch_others(|error: CaughtError| {
            let caught = errors::PgError::from_caught(&error);
            // SAFETY: we are in the worker's top level with a failed transaction open; aborting
            // it releases its locks, LWLocks, snapshots and memory, like PostgreSQL's own loop.
            unsafe {
                pg_sys::AbortCurrentTransaction();
                pg_sys::LWLockReleaseAll();
            }
            Err(errors::Error::Postgres(caught))
        })
        .execute()
}

/// `run_in_transaction` of a body that uses SPI: one error for both ways it can fail.
pub fn run_spi<T>(
    body: impl FnOnce() -> pgrx::spi::Result<T> + UnwindSafe + RefUnwindSafe,
) -> errors::Result<T> {
    run_in_transaction(body).and_then(|r| r.map_err(errors::Error::from))
}

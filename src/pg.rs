//! Thin safe wrappers over the few PostgreSQL C calls that several processes make (the clock,
//! the current database, latch waits, process exit, the backend SIGTERM handler) and the cell
//! that keeps a chained hook.
//! None of them raises: the queue's commit-path code may call them.

use pgrx::pg_sys;
use std::cell::UnsafeCell;

/// The current time as a TimestampTz (µs since 2000-01-01).
pub fn now() -> i64 {
    // SAFETY: GetCurrentTimestamp only reads the clock; it cannot raise.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// The database this backend is connected to (InvalidOid, 0, in the launcher).
pub fn database_id() -> u32 {
    // SAFETY: reads a process global that PostgreSQL sets once at connection.
    unsafe { pg_sys::MyDatabaseId }.to_u32()
}

/// Sleeps on this backend's latch for up to `ms` milliseconds (woken early by SetLatch), then
/// honours pending interrupts (query cancel, terminate). For short polling loops in user
/// backends.
pub fn sleep_on_latch(ms: i64) {
    // SAFETY: a standard latch wait; the latch is reset before interrupts are checked, as
    // PostgreSQL's own waiting loops do.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            ms,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    pgrx::check_for_interrupts!();
}

/// Ends the process through PostgreSQL's `proc_exit` (exit callbacks run): 0 tells the
/// postmaster not to restart a background worker, 1 that it should.
pub fn proc_exit(code: i32) -> ! {
    // SAFETY: proc_exit runs the registered exit callbacks and never returns.
    unsafe { pg_sys::proc_exit(code) };
    // PG18 declares it with C11 `_Noreturn` in front, which bindgen does not carry over: there
    // the binding returns `()`.
    #[cfg(feature = "pg18")]
    unreachable!("proc_exit returned")
}

/// A process-local slot for a hook value saved at `_PG_init` (the previous hook to chain to).
pub struct HookCell<T>(UnsafeCell<T>);

// SAFETY: PostgreSQL backends are single-threaded; the cell is written once in _PG_init (in
// the postmaster, inherited by every backend) before any reader runs.
unsafe impl<T> Sync for HookCell<T> {}

impl<T: Copy> HookCell<T> {
    pub const fn new(value: T) -> HookCell<T> {
        HookCell(UnsafeCell::new(value))
    }

    pub fn get(&self) -> T {
        // SAFETY: single-threaded; see the Sync impl.
        unsafe { *self.0.get() }
    }

    pub fn set(&self, value: T) {
        // SAFETY: single-threaded; see the Sync impl.
        unsafe { *self.0.get() = value }
    }
}

extern "C-unwind" {
    /// PostgreSQL's SIGTERM handler for backends (`tcop/postgres.c`).
    #[link_name = "die"]
    fn postgres_die(postgres_signal_arg: std::ffi::c_int);
}

/// Background workers: SIGTERM runs PostgreSQL's own `die()` handler, so even a running
/// statement stops at its next interrupt check (FATAL, exit 1).
pub fn die_on_sigterm() {
    // PG18 renamed the backend's pqsignal to pqsignal_be (port.h makes `pqsignal` a macro, which
    // bindgen does not see) and made it return nothing; the previous handler is unused here.
    #[cfg(not(feature = "pg18"))]
    use pg_sys::pqsignal;
    #[cfg(feature = "pg18")]
    use pg_sys::pqsignal_be as pqsignal;
    // SAFETY: replaces a signal handler with PostgreSQL's standard one for backends (the C
    // symbol: pgrx's `pg_sys::die` is a Rust shim, not a signal handler).
    unsafe { pqsignal(pg_sys::SIGTERM as i32, Some(postgres_die)) };
}

//! The SQL surface: TVIEW life cycle, monitoring functions, and the utility hook.

pub mod create;
pub mod ddl;
pub mod health;
pub mod ops;
pub mod repair;
pub mod status;
pub mod tokens;
pub mod triggers;
pub mod tview;
pub mod utility_hook;

use pgrx::pg_sys;

/// Sleeps on this backend's latch for up to `ms` milliseconds (woken early by SetLatch), then
/// honours pending interrupts (query cancel, terminate). For short polling loops in user backends.
pub fn sleep_on_latch(ms: i64) {
    // SAFETY: a standard latch wait in a user backend; the latch is reset before interrupts are
    // checked, as PostgreSQL's own waiting loops do.
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

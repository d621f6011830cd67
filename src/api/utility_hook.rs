//! ProcessUtility hook, run in user backends: before DROP DATABASE, ask that database's
//! drainer to leave so the drop is not refused for "being accessed by other users".

use crate::queue::slots;
use pgrx::pg_sys;
use std::cell::UnsafeCell;
use std::time::{Duration, Instant};

struct PrevHook(UnsafeCell<pg_sys::ProcessUtility_hook_type>);
// SAFETY: written once in _PG_init (postmaster) and read by the single backend thread.
unsafe impl Sync for PrevHook {}
static PREV: PrevHook = PrevHook(UnsafeCell::new(None));

/// How long DROP DATABASE waits for the drainer to go.
const STOP_WAIT: Duration = Duration::from_secs(5);

pub fn install() {
    // SAFETY: called once from _PG_init; saves and chains the previous hook.
    unsafe {
        *PREV.0.get() = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

#[allow(clippy::too_many_arguments)]
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    // SAFETY: pstmt is the statement PostgreSQL is about to execute; we only read it, then
    // chain to the previous hook (or the standard implementation) with the same arguments.
    unsafe {
        let stmt = (*pstmt).utilityStmt;
        if !stmt.is_null() && pgrx::is_a(stmt, pg_sys::NodeTag::T_DropdbStmt) {
            let dropdb = stmt as *mut pg_sys::DropdbStmt;
            let dboid = pg_sys::get_database_oid((*dropdb).dbname, true);
            if dboid != pg_sys::InvalidOid {
                stop_drainer(dboid.to_u32());
            }
        }
        match *PREV.0.get() {
            Some(prev) => prev(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
            None => pg_sys::standard_ProcessUtility(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
        }
    }
}

fn stop_drainer(dboid: u32) {
    if !slots::request_stop(dboid) {
        return;
    }
    let deadline = Instant::now() + STOP_WAIT;
    while slots::drainer_running(dboid) && Instant::now() < deadline {
        super::sleep_on_latch(10);
    }
}

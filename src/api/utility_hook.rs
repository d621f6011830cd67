//! ProcessUtility hook, run in user backends: before DROP DATABASE, ask that database's
//! drainer to leave so the drop is not refused for "being accessed by other users"; before
//! DROP EXTENSION pg_tviews_bgw, stop this database's drainers and lock every captured table
//! first, so that no committing writer (which appends to a journal table the drop is about to
//! lock) can deadlock with the drop.

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
        if !stmt.is_null() && drops_this_extension(stmt) {
            stop_drainer(pg_sys::MyDatabaseId.to_u32());
            lock_captured_tables();
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

/// `DROP EXTENSION ... pg_tviews_bgw ...`.
///
/// # Safety
/// `stmt` is a valid utility statement.
unsafe fn drops_this_extension(stmt: *mut pg_sys::Node) -> bool {
    // SAFETY: per the caller; a DropStmt of extensions lists its names as String nodes.
    unsafe {
        if !pgrx::is_a(stmt, pg_sys::NodeTag::T_DropStmt) {
            return false;
        }
        let drop = stmt as *mut pg_sys::DropStmt;
        if (*drop).removeType != pg_sys::ObjectType::OBJECT_EXTENSION {
            return false;
        }
        let objects = (*drop).objects;
        if objects.is_null() {
            return false;
        }
        (0..(*objects).length as usize).any(|i| {
            let node = (*(*objects).elements.add(i)).ptr_value as *mut pg_sys::Node;
            pgrx::is_a(node, pg_sys::NodeTag::T_String)
                && std::ffi::CStr::from_ptr((*(node as *mut pg_sys::String)).sval)
                    == crate::catalog::EXTENSION_NAME
        })
    }
}

/// Takes ACCESS EXCLUSIVE on every table carrying a capture trigger, in OID order, before the
/// drop locks anything of the extension: writers still inside a transaction on those tables
/// commit first (their journal row goes in while the journal tables are still free), and later
/// writers wait for the drop, then write without triggers.
fn lock_captured_tables() {
    // SAFETY: a utility statement runs inside a transaction; SPI needs an active snapshot,
    // popped right after (an ERROR in between is cleaned up by the abort).
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
    let tables = pgrx::Spi::get_one::<Vec<pg_sys::Oid>>(
        "SELECT coalesce(array_agg(DISTINCT t.tgrelid ORDER BY t.tgrelid), '{}') \
         FROM pg_catalog.pg_trigger t \
         JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = t.tgfoid \
                                    AND d.deptype = 'e' \
         JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_tviews_bgw'",
    );
    // SAFETY: pops the snapshot pushed above.
    unsafe { pg_sys::PopActiveSnapshot() };
    for table in tables.ok().flatten().unwrap_or_default() {
        // SAFETY: a relation lock by OID inside the transaction, released at its end; a table
        // dropped meanwhile is skipped by PostgreSQL's own lookups later.
        unsafe { pg_sys::LockRelationOid(table, pg_sys::AccessExclusiveLock as pg_sys::LOCKMODE) };
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

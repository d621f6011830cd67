//! ProcessUtility hook, run in user backends: before DROP DATABASE, ask that database's
//! drainer to leave so the drop is not refused for "being accessed by other users"; before
//! DROP EXTENSION pg_tviews_bgw, stop this database's drainers and lock every captured table
//! first, so that no committing writer (which appends to a journal table the drop is about to
//! lock) can deadlock with the drop.

use crate::queue::slots;
use pgrx::pg_sys;
use std::time::{Duration, Instant};

static PREV: crate::pg::HookCell<pg_sys::ProcessUtility_hook_type> = crate::pg::HookCell::new(None);

/// How long DROP DATABASE waits for the drainer to go.
const STOP_WAIT: Duration = Duration::from_secs(5);

pub fn install() {
    // SAFETY: called once from _PG_init; saves and chains the previous hook.
    unsafe {
        PREV.set(pg_sys::ProcessUtility_hook);
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

/// # Safety
/// Installed as `ProcessUtility_hook`; PostgreSQL calls it with the arguments of
/// `standard_ProcessUtility`, which it passes on unchanged.
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
            // No waiting for it to go: under writers a commit may start it again at once;
            // the locks below keep any drainer from getting in the way.
            slots::request_stop(crate::pg::database_id());
            lock_captured_tables();
        }
        match PREV.get() {
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

/// How long DROP EXTENSION tries to take all its locks at once before it waits for them in
/// order like any DDL.
const LOCK_ALL_WAIT: Duration = Duration::from_secs(10);

/// Takes ACCESS EXCLUSIVE on every table carrying a capture trigger and on every table of the
/// extension, all or none: each try takes them without waiting and, if one is busy, gives back
/// what it took and tries again a moment later. The drop then never waits while holding a lock
/// that a committing writer (source, then journal) or a worker (metadata, then source) needs
/// next, so neither deadlocks with it; once it holds them all, both wait for it instead.
fn lock_captured_tables() {
    // SAFETY: a utility statement runs inside a transaction; SPI needs an active snapshot,
    // popped right after (an ERROR in between is cleaned up by the abort).
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
    let tables = pgrx::Spi::get_one::<Vec<pg_sys::Oid>>(
        "SELECT coalesce(array_agg(DISTINCT oid ORDER BY oid), '{}') FROM ( \
             SELECT t.tgrelid AS oid FROM pg_catalog.pg_trigger t \
             JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = t.tgfoid \
                                        AND d.deptype = 'e' \
             JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_tviews_bgw' \
             UNION ALL \
             SELECT c.oid FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid \
                                        AND d.deptype = 'e' \
             JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_tviews_bgw' \
             WHERE c.relkind = 'r') s",
    );
    // SAFETY: pops the snapshot pushed above.
    unsafe { pg_sys::PopActiveSnapshot() };
    let tables = tables.ok().flatten().unwrap_or_default();
    let lockmode = pg_sys::AccessExclusiveLock as pg_sys::LOCKMODE;
    let deadline = Instant::now() + LOCK_ALL_WAIT;
    while Instant::now() < deadline {
        let mut taken = Vec::with_capacity(tables.len());
        // SAFETY: relation locks by OID inside the transaction; the ones given back were taken
        // just now (a lock this transaction held before is reference-counted, and stays).
        let all = unsafe {
            tables.iter().all(|&table| {
                let ok = pg_sys::ConditionalLockRelationOid(table, lockmode);
                if ok {
                    taken.push(table);
                }
                ok
            })
        };
        if all {
            return;
        }
        for table in taken {
            // SAFETY: see above.
            unsafe { pg_sys::UnlockRelationOid(table, lockmode) };
        }
        // A drainer (re)started by a commit meanwhile is asked to leave again.
        let dboid = crate::pg::database_id();
        slots::request_stop(dboid);
        super::sleep_on_latch(5);
    }
    for table in tables {
        // SAFETY: see above; past the deadline, wait in OID order like any DDL.
        unsafe { pg_sys::LockRelationOid(table, lockmode) };
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

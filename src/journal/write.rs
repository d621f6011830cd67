//! Journal writes: a committing transaction's journal row (`durability = journal`, at PRE_COMMIT) or a
//! preparing transaction's keys (`pg_tview_prepared`, at PRE_PREPARE). Runs in every process
//! that stages keys (user backends, and drainers whose refreshes cascade), while the
//! transaction can still abort: the row commits or vanishes with it.
//!
//! The row goes in with `heap_insert` on an index-less table: no SPI, no plan, no permission
//! check per transaction (writers need no privilege on the extension's tables). The schema is
//! looked up once per backend; the table by name through the syscache, again only after a
//! change to relation or schema names (`capture::cache::name_generation`): that lookup was
//! 0.7% of a single-row UPDATE's cost with `durability = none`.

use super::{encode, table_name};
use crate::errors::raise;
use crate::queue::QueueEntry;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::cell::Cell;

/// Keys per journal row: a huge transaction writes several rows, each well below the 1 GB
/// limit of a bytea.
const KEYS_PER_ROW: usize = 1 << 20;

thread_local! {
    /// Namespace of the extension in this backend's database, once known.
    static NAMESPACE: Cell<Option<pg_sys::Oid>> = const { Cell::new(None) };
}

fn lookup_namespace() -> Option<pg_sys::Oid> {
    // SAFETY: PRE_COMMIT runs inside the still-open transaction without an active snapshot;
    // SPI needs one. It is popped right after; an ERROR in between is cleaned up by the abort.
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
    let found = Spi::get_one::<pg_sys::Oid>(
        "SELECT extnamespace FROM pg_catalog.pg_extension WHERE extname = 'pg_tviews_bgw'",
    );
    // SAFETY: pops the snapshot pushed above.
    unsafe { pg_sys::PopActiveSnapshot() };
    found.ok().flatten()
}

/// Where a row of keys goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// `pg_tview_journal_<n>`.
    Journal(usize),
    /// `pg_tview_prepared`.
    Prepared,
}

impl Target {
    fn relname(self) -> &'static std::ffi::CStr {
        match self {
            Target::Journal(i) => table_name(i),
            Target::Prepared => c"pg_tview_prepared",
        }
    }

    /// Slot of this table in `RELIDS`.
    fn slot(self) -> usize {
        match self {
            Target::Journal(i) => i.min(2),
            Target::Prepared => 3,
        }
    }
}

thread_local! {
    /// Per target (`Target::slot`): its oid, as resolved at a name generation.
    static RELIDS: Cell<[Option<(u64, pg_sys::Oid)>; 4]> = const { Cell::new([None; 4]) };
}

thread_local! {
    /// `durability = none`: the journal table (by OID, which changes if the extension is
    /// re-created) whose "not journaled" marker this backend knows to exist, so that it does
    /// not ask shared memory on every commit.
    static MARKER_KNOWN: Cell<Option<pg_sys::Oid>> = const { Cell::new(None) };
}

/// Whether this backend already knows the marker row of journal table `relid` exists.
pub fn marker_known(relid: pg_sys::Oid) -> bool {
    MARKER_KNOWN.with(Cell::get) == Some(relid)
}

/// Remembers that the marker of journal table `relid` exists (it committed, or shared memory
/// says another transaction committed it). Cannot raise.
pub fn remember_marker(relid: pg_sys::Oid) {
    MARKER_KNOWN.with(|c| c.set(Some(relid)));
}

/// OID of the target table, or `None` when the extension (or this version's table) is not
/// installed here.
pub fn relid(target: Target) -> Option<pg_sys::Oid> {
    // Read before resolving: an invalidation during the lookups leaves the next call to
    // resolve again.
    let generation = crate::capture::cache::name_generation();
    if let Some((at, relid)) = RELIDS.with(Cell::get)[target.slot()] {
        if at == generation {
            return Some(relid);
        }
    }
    let relid = resolve(target)?;
    RELIDS.with(|r| {
        let mut all = r.get();
        all[target.slot()] = Some((generation, relid));
        r.set(all);
    });
    Some(relid)
}

fn resolve(target: Target) -> Option<pg_sys::Oid> {
    let name = target.relname();
    for attempt in 0..2 {
        let namespace = match NAMESPACE.with(Cell::get) {
            Some(ns) if attempt == 0 => ns,
            _ => {
                let ns = lookup_namespace()?;
                NAMESPACE.with(|c| c.set(Some(ns)));
                ns
            }
        };
        // SAFETY: a syscache lookup by name; returns InvalidOid when there is no such table.
        let relid = unsafe { pg_sys::get_relname_relid(name.as_ptr(), namespace) };
        if relid != pg_sys::InvalidOid {
            return Some(relid);
        }
        // Extension dropped and maybe re-created elsewhere: look the schema up again.
        NAMESPACE.with(|c| c.set(None));
    }
    None
}

/// Appends `entries` to `target` as part of the current transaction. Returns false when the
/// table does not exist in this database (extension not installed, or not updated yet).
pub fn write(target: Target, entries: &[QueueEntry]) -> bool {
    let Some(relid) = relid(target) else {
        return false;
    };
    let written_at = crate::pg::now();
    for chunk in entries.chunks(KEYS_PER_ROW) {
        // SAFETY: inside a transaction at PRE_COMMIT; the relation is opened and closed here with
        // RowExclusiveLock (kept until commit, as for any insert); the tuple is built for its
        // own descriptor, whose shape is checked first.
        unsafe { insert_row(relid, written_at, &encode(chunk)) };
    }
    true
}

/// # Safety
/// Inside a transaction, at PRE_COMMIT or PRE_PREPARE, with `relid` a journal table
/// whose descriptor `write` checked.
unsafe fn insert_row(relid: pg_sys::Oid, written_at: i64, payload: &[u8]) {
    // SAFETY: see `write`.
    unsafe {
        let rel = pg_sys::table_open(relid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
        let desc = (*rel).rd_att;
        // PgTupleDesc reads attributes the same way on every version (PG18 replaced the attrs
        // array by TupleDescAttr); it only borrows the relation's descriptor.
        let attrs = pgrx::PgTupleDesc::from_pg_unchecked(desc);
        let type_of = |i: usize| attrs.get(i).map(|a| a.atttypid);
        let shape_ok = attrs.len() == 2
            && type_of(0) == Some(pg_sys::TIMESTAMPTZOID)
            && type_of(1) == Some(pg_sys::BYTEAOID);
        if !shape_ok {
            raise(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "pg_tviews_bgw key table has an unexpected shape",
                Some("Its columns must be (written_at timestamptz, entries bytea)."),
                Some("Reinstall the extension, or run with pg_tviews_bgw.durability = none."),
            );
        }
        let mut values = [
            pg_sys::Datum::from(written_at),
            payload.into_datum().expect("a byte slice is never NULL"),
        ];
        let mut nulls = [false, false];
        let tuple = pg_sys::heap_form_tuple(desc, values.as_mut_ptr(), nulls.as_mut_ptr());
        pg_sys::simple_heap_insert(rel, tuple);
        pg_sys::heap_freetuple(tuple);
        pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
    }
}

//! Per-process cache of the prepared refresh statements of each TVIEW (drainers run the same
//! few statements for every batch). Entries are dropped when PostgreSQL invalidates the TVIEW
//! table or its backing view (ALTER, CREATE OR REPLACE VIEW, DROP), and rebuilt on next use;
//! the plans themselves are re-planned by the plan cache when anything they read changes.

use crate::catalog;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

pub struct Plans {
    view_oid: u32,
    /// `upsert_keys_sql`, argument `$1 bigint[]`.
    upsert: OwnedPreparedStatement,
    /// `upsert_keys_noting_sql` (writing statements), built on first use.
    upsert_noting: Option<OwnedPreparedStatement>,
    /// `delete_missing_keys_sql`, argument `$1 bigint[]`, built on first use (most batches
    /// delete nothing).
    delete_missing: Option<OwnedPreparedStatement>,
    /// Lineage rule -> `SELECT array_agg(k) FROM (resolve_sql)`, argument `$1 bigint[]`.
    resolvers: HashMap<u32, Option<OwnedPreparedStatement>>,
    /// `touch_keys_sql` when another TVIEW reads this one (`Some(None)`: none does), built on
    /// first use by the priority lane. Creating a dependent TVIEW adds capture triggers to
    /// this table, which invalidates its relcache entry and with it these plans.
    touch: Option<Option<OwnedPreparedStatement>>,
    shape: super::sql::TviewShape,
}

thread_local! {
    /// The keys `_pg_tviews_note_key` was handed, one frame per `upsert_keys_noting_sql`
    /// statement running (a statement's triggers may refresh another TVIEW inside it).
    static NOTED: RefCell<Vec<Vec<i64>>> = const { RefCell::new(Vec::new()) };
    static CACHE: RefCell<HashMap<u32, Plans>> = RefCell::new(HashMap::new());
    /// Relations invalidated since the last use (filled by the callback, which must not free
    /// plans itself); `None` means "everything".
    static STALE: RefCell<Option<Vec<u32>>> = const { RefCell::new(Some(Vec::new())) };
    static CALLBACK_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// # Safety
/// Registered with `CacheRegisterRelcacheCallback`; called by PostgreSQL with its own
/// arguments, touches only this backend's thread-local plan cache.
#[pg_guard]
unsafe extern "C-unwind" fn on_relcache_invalidation(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    STALE.with(|s| {
        let Ok(mut stale) = s.try_borrow_mut() else {
            return;
        };
        match (stale.as_mut(), relid == pg_sys::InvalidOid) {
            (Some(list), false) if list.len() < 1024 => list.push(relid.to_u32()),
            _ => *stale = None,
        }
    });
}

fn forget_stale() {
    let stale = STALE.with(|s| s.replace(Some(Vec::new())));
    CACHE.with(|c| {
        let mut cache = c.borrow_mut();
        match stale {
            None => cache.clear(),
            Some(list) if !list.is_empty() => {
                cache.retain(|&tview, p| !list.contains(&tview) && !list.contains(&p.view_oid));
            }
            Some(_) => {}
        }
    });
}

fn build(client: &SpiClient<'_>, table_oid: pg_sys::Oid) -> spi::Result<Option<Plans>> {
    if !CALLBACK_REGISTERED.with(|r| r.replace(true)) {
        // SAFETY: registers a static function once per process, as PostgreSQL requires.
        unsafe {
            pg_sys::CacheRegisterRelcacheCallback(
                Some(on_relcache_invalidation),
                pg_sys::Datum::from(0),
            )
        };
    }
    let Some(shape) = catalog::load_shape(client, table_oid)? else {
        catalog::raise_if_view_missing(client, table_oid)?;
        return Ok(None);
    };
    let view_oid = client
        .select(
            "SELECT view_oid FROM pg_tview_meta WHERE table_oid = $1",
            None,
            &[table_oid.into()],
        )?
        .first()
        .get_one::<pg_sys::Oid>()?
        .unwrap_or(pg_sys::InvalidOid);
    let upsert = client
        .prepare_mut(
            shape.upsert_keys_sql().as_str(),
            &[PgBuiltInOids::INT8ARRAYOID.into()],
        )?
        .keep();
    Ok(Some(Plans {
        view_oid: view_oid.to_u32(),
        upsert,
        upsert_noting: None,
        delete_missing: None,
        resolvers: HashMap::new(),
        touch: None,
        shape,
    }))
}

/// Runs `f` with the cached plans of `table_oid` (building them on first use); `Ok(None)` when
/// the table is not, or no longer, a TVIEW.
pub fn with_plans<R>(
    client: &mut SpiClient<'_>,
    table_oid: pg_sys::Oid,
    f: impl FnOnce(&mut SpiClient<'_>, &mut Plans) -> spi::Result<R>,
) -> spi::Result<Option<R>> {
    forget_stale();
    let cached = CACHE.with(|c| c.borrow_mut().remove(&table_oid.to_u32()));
    let mut plans = match cached {
        Some(p) => p,
        None => match build(client, table_oid)? {
            Some(p) => p,
            None => return Ok(None),
        },
    };
    let result = f(client, &mut plans)?;
    CACHE.with(|c| c.borrow_mut().insert(table_oid.to_u32(), plans));
    Ok(Some(result))
}

/// A key array argument, built with one `construct_array` call: pgrx's `Vec<i64>` argument
/// appends element by element through an error boundary each and looks the array type up in
/// the syscache, ~1.5k instructions for the one key of a single-row write (0.7% of it with two
/// TVIEWs), and more per key in the worker's batches.
struct Int8Array<'a>(&'a [i64]);

impl IntoDatum for Int8Array<'_> {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        let mut elements: Vec<pg_sys::Datum> =
            self.0.iter().map(|&k| pg_sys::Datum::from(k)).collect();
        // SAFETY: `elements` holds `len` int8 datums (by value, 8 bytes, double-aligned, as
        // pg_type says); the array is palloc'd in the current memory context, like pgrx's.
        let array = unsafe {
            pg_sys::construct_array(
                elements.as_mut_ptr(),
                elements.len() as i32,
                pg_sys::INT8OID,
                8,
                true,
                pg_sys::TYPALIGN_DOUBLE as std::ffi::c_char,
            )
        };
        Some(pg_sys::Datum::from(array))
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::INT8ARRAYOID
    }
}

/// What `upsert_keys_sql` returned: rows written, rows of the view that repeat a key, and
/// distinct keys the view returned.
fn tally(table: pgrx::spi::SpiTupleTable<'_>) -> spi::Result<(i64, i64, usize)> {
    let mut returned: smallvec::SmallVec<[i64; 8]> = smallvec::SmallVec::new();
    let mut rows = 0;
    for row in table {
        if let Some(key) = row.get::<i64>(1)? {
            returned.push(key);
        }
        rows = row.get::<i64>(2)?.unwrap_or(0);
    }
    let (repeated, distinct) = repeats(returned.into_vec());
    Ok((rows, repeated, distinct))
}

/// `(keys that repeat, distinct keys)` of `keys`.
fn repeats(mut keys: Vec<i64>) -> (i64, usize) {
    let all = keys.len();
    keys.sort_unstable();
    keys.dedup();
    ((all - keys.len()) as i64, keys.len())
}

/// Called by `upsert_keys_noting_sql` for every row of the view's result: hands its key to the
/// statement's caller (`Plans::refresh`). Outside such a statement it does nothing. Returns
/// true (the row goes on into the upsert).
#[pg_extern(volatile, parallel_unsafe)]
fn _pg_tviews_note_key(key: i64) -> bool {
    NOTED.with(|n| {
        if let Some(frame) = n.borrow_mut().last_mut() {
            frame.push(key);
        }
    });
    true
}

/// Runs `f` with a frame of `NOTED` open; returns its result and the keys noted meanwhile. The
/// frame is closed on unwinding too.
fn noting<R>(f: impl FnOnce() -> R) -> (R, Vec<i64>) {
    struct Frame;
    impl Drop for Frame {
        fn drop(&mut self) {
            if std::thread::panicking() {
                NOTED.with(|n| n.borrow_mut().pop());
            }
        }
    }
    NOTED.with(|n| n.borrow_mut().push(Vec::new()));
    let frame = Frame;
    let result = f();
    std::mem::forget(frame);
    let keys = NOTED.with(|n| n.borrow_mut().pop()).unwrap_or_default();
    (result, keys)
}

impl Plans {
    /// Recomputes the rows of `keys` (sorted, distinct): upserts what the view returns, then,
    /// only when the view returned fewer keys than asked for, deletes the rows it no longer
    /// returns. Returns rows written (with `count_written`; writing statements, which do not
    /// report them, count only the rows deleted); raises `cardinality_violation` on repeated
    /// keys (see `refresh::counted`).
    pub fn refresh(
        &mut self,
        client: &mut SpiClient<'_>,
        table_oid: pg_sys::Oid,
        keys: &[i64],
        count_written: bool,
    ) -> spi::Result<u64> {
        if !count_written && self.upsert_noting.is_none() {
            // The extension's schema is there while its TVIEWs are refreshed.
            if let Some(schema) = catalog::extension_schema() {
                let sql = self
                    .shape
                    .upsert_keys_noting_sql(&pgrx::spi::quote_identifier(&schema));
                self.upsert_noting = Some(
                    client
                        .prepare_mut(sql.as_str(), &[PgBuiltInOids::INT8ARRAYOID.into()])?
                        .keep(),
                );
            }
        }
        let (rows, repeated, returned) = match (&self.upsert_noting, count_written) {
            (Some(plan), false) => {
                let (result, mut noted) = noting(|| {
                    client
                        .update(plan, None, &[Int8Array(keys).into()])
                        .map(drop)
                });
                result?;
                // Only the keys asked for: no other key can come from this statement's view.
                noted.retain(|k| keys.binary_search(k).is_ok());
                let (repeated, distinct) = repeats(noted);
                (0, repeated, distinct)
            }
            _ => tally(client.update(&self.upsert, None, &[Int8Array(keys).into()])?)?,
        };
        let mut rows = super::counted(Some(rows), Some(repeated), table_oid);
        if returned < keys.len() {
            if self.delete_missing.is_none() {
                self.delete_missing = Some(
                    client
                        .prepare_mut(
                            self.shape.delete_missing_keys_sql().as_str(),
                            &[PgBuiltInOids::INT8ARRAYOID.into()],
                        )?
                        .keep(),
                );
            }
            if let Some(plan) = &self.delete_missing {
                rows += client
                    .update(plan, None, &[Int8Array(keys).into()])?
                    .first()
                    .get_one::<i64>()?
                    .unwrap_or(0)
                    .max(0) as u64;
            }
        }
        Ok(rows)
    }

    /// Rewrites the rows of `keys` unchanged when another TVIEW reads this one, so that its
    /// capture triggers stage the dependents' keys again (the priority lane follows them).
    /// `Some(missing)`: how many of the keys have no row; `None`: no TVIEW reads this one.
    pub fn touch(
        &mut self,
        client: &mut SpiClient<'_>,
        table_oid: pg_sys::Oid,
        keys: &[i64],
    ) -> spi::Result<Option<u64>> {
        if self.touch.is_none() {
            let read = client
                .select(
                    "SELECT EXISTS (SELECT 1 FROM pg_tview_meta d WHERE $1 = ANY (d.dependencies::oid[]))",
                    None,
                    &[table_oid.into()],
                )?
                .first()
                .get_one::<bool>()?
                .unwrap_or(false);
            self.touch = Some(if read {
                Some(
                    client
                        .prepare_mut(
                            self.shape.touch_keys_sql().as_str(),
                            &[PgBuiltInOids::INT8ARRAYOID.into()],
                        )?
                        .keep(),
                )
            } else {
                None
            });
        }
        let Some(Some(plan)) = &self.touch else {
            return Ok(None);
        };
        let mut distinct = keys.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let found = client
            .update(plan, None, &[Int8Array(&distinct).into()])?
            .first()
            .get_one::<i64>()?
            .unwrap_or(0)
            .max(0) as u64;
        Ok(Some((distinct.len() as u64).saturating_sub(found)))
    }

    /// TVIEW keys for captured `values` of lineage `rule`.
    pub fn resolve(
        &mut self,
        client: &mut SpiClient<'_>,
        table_oid: pg_sys::Oid,
        rule: u32,
        values: Vec<i64>,
    ) -> spi::Result<Vec<i64>> {
        if let std::collections::hash_map::Entry::Vacant(slot) = self.resolvers.entry(rule) {
            let plan = match catalog::resolve_sql(client, table_oid, rule)? {
                Some(sql) => Some(
                    client
                        .prepare(
                            format!("SELECT array_agg(k) FROM ({sql}) AS r(k)").as_str(),
                            &[PgBuiltInOids::INT8ARRAYOID.into()],
                        )?
                        .keep(),
                ),
                None => None,
            };
            slot.insert(plan);
        }
        let Some(plan) = self.resolvers.get(&rule).and_then(Option::as_ref) else {
            return Ok(Vec::new());
        };
        let found = client
            .select(plan, None, &[Int8Array(&values).into()])?
            .first()
            .get_one::<Vec<Option<i64>>>()?;
        Ok(found.unwrap_or_default().into_iter().flatten().collect())
    }
}

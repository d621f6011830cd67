//! Per-process cache of the prepared refresh statements of each TVIEW (drainers run the same
//! few statements for every batch). Entries are dropped when PostgreSQL invalidates the TVIEW
//! table or its backing view (ALTER, CREATE OR REPLACE VIEW, DROP), and rebuilt on next use;
//! the plans themselves are re-planned by the plan cache when anything they read changes.

use crate::catalog;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ptr::NonNull;

pub struct Plans {
    view_oid: u32,
    /// `upsert_keys_sql`.
    upsert: KeptPlan,
    /// `upsert_keys_noting_sql` (writing statements), built on first use.
    upsert_noting: Option<KeptPlan>,
    /// `delete_missing_keys_sql`, built on first use (most batches delete nothing).
    delete_missing: Option<KeptPlan>,
    /// Lineage rule -> `SELECT array_agg(k::bigint) FROM (resolve_sql)`.
    resolvers: HashMap<u32, Option<KeptPlan>>,
    /// `touch_keys_sql` when another TVIEW reads this one (`Some(None)`: none does), built on
    /// first use by the priority lane. Creating a dependent TVIEW adds capture triggers to
    /// this table, which invalidates its relcache entry and with it these plans.
    touch: Option<Option<KeptPlan>>,
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
    let upsert = KeptPlan::prepare(client, &shape.upsert_keys_sql())?;
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

/// A statement of one `$1 bigint[]` argument (the keys), prepared once per process and kept
/// across transactions, that always runs its generic plan: prepared with
/// `CURSOR_OPT_GENERIC_PLAN`. Custom plans (the default for the first executions, and whenever
/// the planner guesses them cheaper) would re-plan the whole view for every statement, most of
/// a sync-mode write's cost; pgrx's prepared statements take no cursor options, and setting
/// `plan_cache_mode` around every in-statement refresh instead cost a GUC nesting level per
/// statement (on PostgreSQL 15 leaving one walks every setting). A session's own
/// `plan_cache_mode = force_custom_plan` still wins, as it does for every prepared statement.
struct KeptPlan(NonNull<pg_sys::_SPI_plan>);

impl KeptPlan {
    /// Prepares `sql` in the caller's SPI connection (`_client`) and keeps it.
    fn prepare(_client: &SpiClient<'_>, sql: &str) -> spi::Result<KeptPlan> {
        // Generated from identifiers, which cannot hold a NUL.
        let Ok(sql) = std::ffi::CString::new(sql) else {
            return Err(spi::SpiError::SpiError(pgrx::spi::SpiErrorCodes::Argument));
        };
        let mut argtypes = [pg_sys::INT8ARRAYOID];
        // SAFETY: called inside an SPI connection (the caller holds its client); SPI copies
        // the text and the argument types into the plan. An ERROR (syntax, missing relation)
        // unwinds as a Rust panic through pgrx's guard, like pgrx's own prepare.
        let plan = unsafe {
            pg_sys::SPI_prepare_cursor(
                sql.as_ptr(),
                1,
                argtypes.as_mut_ptr(),
                pg_sys::CURSOR_OPT_GENERIC_PLAN as i32,
            )
        };
        // SAFETY: SPI_result is set by the call above when it returns no plan.
        let plan = NonNull::new(plan).ok_or_else(|| status_error(unsafe { pg_sys::SPI_result }))?;
        let kept = KeptPlan(plan);
        // SAFETY: a plan prepared in this connection, not kept yet; on failure drop() frees it.
        let status = unsafe { pg_sys::SPI_keepplan(plan.as_ptr()) };
        if status != 0 {
            return Err(status_error(status));
        }
        Ok(kept)
    }

    /// Runs the statement for `keys` (writes allowed) in the caller's SPI connection; its
    /// result rows stay readable until the connection ends.
    fn run(&self, _client: &mut SpiClient<'_>, keys: &[i64]) -> spi::Result<Rows> {
        let Some(array) = Int8Array(keys).into_datum() else {
            unreachable!("a key array is never NULL")
        };
        let mut values = [array];
        let nulls = [b' ' as std::ffi::c_char];
        // SAFETY: inside the caller's SPI connection, with the one argument the plan was
        // prepared for. Like pgrx's own writes, the transaction gets its xid first (later
        // pgrx reads of this connection then take fresh snapshots), and SPI_tuptable is
        // cleared so a statement that returns no rows is not read as the previous one's.
        let status = unsafe {
            let _ = pg_sys::GetCurrentTransactionId();
            pg_sys::SPI_tuptable = std::ptr::null_mut();
            pg_sys::SPI_execute_plan(
                self.0.as_ptr(),
                values.as_mut_ptr(),
                nulls.as_ptr(),
                false,
                0,
            )
        };
        pgrx::spi::Spi::check_status(status)?;
        // SAFETY: plain reads of SPI's results of the statement just run.
        Ok(unsafe {
            Rows {
                table: pg_sys::SPI_tuptable,
                processed: pg_sys::SPI_processed as usize,
            }
        })
    }
}

impl Drop for KeptPlan {
    fn drop(&mut self) {
        // SAFETY: the plan is ours (prepared above, kept or not) and freed once.
        unsafe { pg_sys::SPI_freeplan(self.0.as_ptr()) };
    }
}

/// The error of a failed SPI call's status (an argument error if it claims success).
fn status_error(status: i32) -> spi::SpiError {
    pgrx::spi::Spi::check_status(status)
        .err()
        .unwrap_or(spi::SpiError::SpiError(pgrx::spi::SpiErrorCodes::Argument))
}

/// The rows a `KeptPlan` returned (`SPI_tuptable`), read by row and column (1-based).
struct Rows {
    table: *mut pg_sys::SPITupleTable,
    processed: usize,
}

impl Rows {
    /// Rows returned, or written by a statement without `RETURNING`.
    fn len(&self) -> usize {
        if self.table.is_null() {
            self.processed
        } else {
            // SAFETY: a live tuple table of the current SPI connection.
            unsafe { (*self.table).numvals as usize }
        }
    }

    /// Column `col` of row `row`, `None` when NULL or out of range; an error when the column
    /// is not of `T`'s type (a datum is never read as another type).
    fn get<T: FromDatum + IntoDatum>(&self, row: usize, col: i32) -> spi::Result<Option<T>> {
        if self.table.is_null() || row >= self.len() {
            return Ok(None);
        }
        // SAFETY: `row` is within the table; SPI_gettypeid and SPI_getbinval check `col`
        // against the descriptor (InvalidOid / NULL when out of range); the datum points into
        // the tuple table, alive until the connection ends, and FromDatum copies what it keeps.
        unsafe {
            let tupdesc = (*self.table).tupdesc;
            let found = pg_sys::SPI_gettypeid(tupdesc, col);
            if found != T::type_oid() {
                return Err(spi::SpiError::DatumError(
                    pgrx::datum::TryFromDatumError::IncompatibleTypes {
                        rust_type: std::any::type_name::<T>(),
                        rust_oid: T::type_oid(),
                        datum_type: format!("oid {}", found.to_u32()),
                        datum_oid: found,
                    },
                ));
            }
            let tuple = *(*self.table).vals.add(row);
            let mut isnull = false;
            let datum = pg_sys::SPI_getbinval(tuple, tupdesc, col, &mut isnull);
            Ok(T::from_datum(datum, isnull))
        }
    }
}

/// A key array argument, built with one `construct_array` call: pgrx's `Vec<i64>` argument
/// appends element by element through an error boundary each and looks the array type up in
/// the syscache, ~1.5k instructions for the one key of a single-row write (0.7% of it with two
/// TVIEWs), and more per key in the worker's batches.
struct Int8Array<'a>(&'a [i64]);

impl IntoDatum for Int8Array<'_> {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        let mut elements: smallvec::SmallVec<[pg_sys::Datum; 8]> =
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
fn tally(table: Rows) -> spi::Result<(i64, i64, usize)> {
    let mut returned: Vec<i64> = Vec::with_capacity(table.len());
    let mut rows = 0;
    for row in 0..table.len() {
        if let Some(key) = table.get::<i64>(row, 1)? {
            returned.push(key);
        }
        rows = table.get::<i64>(row, 2)?.unwrap_or(0);
    }
    let (repeated, distinct) = repeats(returned);
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
                self.upsert_noting = Some(KeptPlan::prepare(client, &sql)?);
            }
        }
        let (rows, repeated, returned) = match (&self.upsert_noting, count_written) {
            (Some(plan), false) => {
                let (result, mut noted) = noting(|| plan.run(client, keys).map(drop));
                result?;
                // Only the keys asked for: no other key can come from this statement's view.
                noted.retain(|k| keys.binary_search(k).is_ok());
                let (repeated, distinct) = repeats(noted);
                (0, repeated, distinct)
            }
            _ => tally(self.upsert.run(client, keys)?)?,
        };
        let mut rows = super::counted(Some(rows), Some(repeated), table_oid);
        if returned < keys.len() {
            if self.delete_missing.is_none() {
                self.delete_missing = Some(KeptPlan::prepare(
                    client,
                    &self.shape.delete_missing_keys_sql(),
                )?);
            }
            if let Some(plan) = &self.delete_missing {
                rows += plan
                    .run(client, keys)?
                    .get::<i64>(0, 1)?
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
                Some(KeptPlan::prepare(client, &self.shape.touch_keys_sql())?)
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
        let found = plan
            .run(client, &distinct)?
            .get::<i64>(0, 1)?
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
                Some(sql) => Some(KeptPlan::prepare(
                    client,
                    &format!("SELECT array_agg(k::bigint) FROM ({sql}) AS r(k)"),
                )?),
                None => None,
            };
            slot.insert(plan);
        }
        let Some(plan) = self.resolvers.get(&rule).and_then(Option::as_ref) else {
            return Ok(Vec::new());
        };
        let found = plan.run(client, &values)?.get::<Vec<Option<i64>>>(0, 1)?;
        Ok(found.unwrap_or_default().into_iter().flatten().collect())
    }
}

//! Reads of the `pg_tview_meta` catalog and of PostgreSQL's own catalogs about a TVIEW.
//! SPI, except `state` (catalog scans); runs in user backends (create/drop, sync-mode writes)
//! and in drainers (inside their transaction).

pub mod analyze;
pub mod lineage;
pub mod shape;
pub mod state;

pub use shape::TviewShape;
pub use state::tview_state;

use pgrx::prelude::*;
use pgrx::spi::SpiClient;

pub const EXTENSION_NAME: &std::ffi::CStr = c"pg_tviews_bgw";

/// True when the extension is installed in the current database (needs a transaction).
pub fn extension_installed() -> bool {
    // SAFETY: a syscache lookup by name with missing_ok = true does not raise for a missing name.
    unsafe { pg_sys::get_extension_oid(EXTENSION_NAME.as_ptr(), true) != pg_sys::InvalidOid }
}

/// Schema of the extension in the current database; `None` when it is not installed.
pub fn extension_schema() -> Option<String> {
    // Sync-mode writers pin their search_path on every statement: the schema of the extension
    // (which cannot move, it is not relocatable) is kept with the location of its catalog
    // table (`state::cached_schema`, a syscache probe), else per extension oid, looked up
    // through pg_extension's index without SPI; a dropped and re-created extension has a new
    // oid.
    if let Some(schema) = state::cached_schema() {
        return Some(schema);
    }
    // SAFETY: a catalog index lookup inside a transaction; with missing_ok it returns
    // InvalidOid instead of raising.
    let extension = unsafe { pg_sys::get_extension_oid(c"pg_tviews_bgw".as_ptr(), true) };
    if extension == pg_sys::InvalidOid {
        return None;
    }
    if let Some(schema) = SCHEMA.with(|s| {
        s.borrow()
            .as_ref()
            .filter(|(oid, _)| *oid == extension.to_u32())
            .map(|(_, schema)| schema.clone())
    }) {
        return Some(schema);
    }
    let schema = Spi::get_one::<String>(
        "SELECT n.nspname::text FROM pg_catalog.pg_extension e \
         JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace \
         WHERE e.extname = 'pg_tviews_bgw'",
    )
    .ok()
    .flatten()?;
    SCHEMA.with(|s| *s.borrow_mut() = Some((extension.to_u32(), schema.clone())));
    Some(schema)
}

thread_local! {
    /// `(extension oid, its schema)`, see `extension_schema`.
    static SCHEMA: std::cell::RefCell<Option<(u32, String)>> = const { std::cell::RefCell::new(None) };
}

thread_local! {
    /// `(extension schema, the search_path pinned for it)`, see `PinnedSearchPath`.
    static PINNED: std::cell::RefCell<Option<(String, std::ffi::CString)>> =
        const { std::cell::RefCell::new(None) };
}

/// Settings changed until dropped, at a GUC nesting level of their own: restored on drop; an
/// ERROR that unwinds past it is cleaned up by the (sub)transaction abort, which pops every GUC
/// nesting level opened inside it.
pub struct ScopedSettings {
    level: Option<i32>,
}

impl ScopedSettings {
    pub fn set(settings: &[(&std::ffi::CStr, &std::ffi::CStr)]) -> ScopedSettings {
        // SAFETY: transaction-local GUC changes at a nesting level of our own, the way
        // PostgreSQL's own maintenance commands pin settings; undone in drop.
        let level = unsafe {
            let level = pg_sys::NewGUCNestLevel();
            for (name, value) in settings {
                pg_sys::set_config_option(
                    name.as_ptr(),
                    value.as_ptr(),
                    pg_sys::GucContext::PGC_USERSET,
                    pg_sys::GucSource::PGC_S_SESSION,
                    pg_sys::GucAction::GUC_ACTION_SAVE,
                    true,
                    0,
                    false,
                );
            }
            level
        };
        ScopedSettings { level: Some(level) }
    }
}

impl Drop for ScopedSettings {
    fn drop(&mut self) {
        // While an ERROR unwinds, the abort of the (sub)transaction restores the settings.
        if let Some(level) = self.level {
            if !std::thread::panicking() {
                // SAFETY: closes the nesting level opened in set(), restoring the old values.
                unsafe { pg_sys::AtEOXact_GUC(true, level) };
            }
        }
    }
}

/// `search_path = pg_catalog, <extension schema>` until dropped, like the workers' (whose path
/// is pinned for good): the extension's own statements name its tables unqualified, and must
/// neither fail nor be shadowed whatever path the calling session (or an `ALTER DATABASE ...
/// SET search_path`) chose.
pub struct PinnedSearchPath {
    _settings: Option<ScopedSettings>,
}

impl PinnedSearchPath {
    pub fn enter() -> PinnedSearchPath {
        PinnedSearchPath {
            _settings: pinned_path()
                .map(|path| ScopedSettings::set(&[(c"search_path", path.as_c_str())])),
        }
    }

    /// `enter`, unless every name already resolves as it would under the pinned path
    /// (`search_path_resolves_as_pinned`): a sync-mode writer checks this per statement, and
    /// pinning costs a GUC nesting level plus recomputing the path twice (on PostgreSQL 15
    /// about 20k instructions, 3.5% of a single-row write). Statements that run as another
    /// role use `enter_for_role`.
    pub fn enter_unless_equivalent() -> PinnedSearchPath {
        if search_path_resolves_as_pinned() {
            return PinnedSearchPath { _settings: None };
        }
        PinnedSearchPath::enter()
    }

    /// `enter` for statements about to run as `role` (a refresh runs as the TVIEW's owner),
    /// unless the path is already the pinned one, or `role` is the current user and every name
    /// resolves as under the pinned path. Another role re-expands `"$user"` and checks schema
    /// privileges of its own: what resolves alike for the writer need not for the owner, and
    /// the owner's privileges must never run what the writer's path found.
    pub fn enter_for_role(role: pg_sys::Oid) -> PinnedSearchPath {
        // SAFETY: a plain read of the backend's current user id.
        let current = unsafe { pg_sys::GetUserId() };
        if (role == current && search_path_resolves_as_pinned()) || search_path_is_pinned() {
            return PinnedSearchPath { _settings: None };
        }
        PinnedSearchPath::enter()
    }

    /// True when this set the path (false: it was left as it was).
    pub fn is_set(&self) -> bool {
        self._settings.is_some()
    }
}

/// The pinned path for the extension's schema (`None` without the extension).
fn pinned_path() -> Option<std::ffi::CString> {
    with_pinned_path(|path| path.to_owned())
}

/// `f` of the pinned path for the extension's schema, built once per schema.
fn with_pinned_path<R>(f: impl FnOnce(&std::ffi::CStr) -> R) -> Option<R> {
    let schema = extension_schema()?;
    PINNED.with(|p| {
        let mut p = p.borrow_mut();
        if p.as_ref().is_none_or(|(s, _)| *s != schema) {
            let path = std::ffi::CString::new(format!(
                "pg_catalog, {}",
                pgrx::spi::quote_identifier(&schema)
            ))
            .ok()?;
            *p = Some((schema, path));
        }
        p.as_ref().map(|(_, path)| f(path))
    })
}

/// `f` of the current `search_path` setting, as set (`None`: no value yet).
fn with_current_search_path<R>(f: impl FnOnce(&std::ffi::CStr) -> R) -> Option<R> {
    // SAFETY: the GUC's current string, owned by the GUC machinery and replaced (not changed in
    // place) by the next SET; `f` only reads it, and sets nothing meanwhile.
    unsafe {
        let path = pg_sys::namespace_search_path;
        (!path.is_null()).then(|| f(std::ffi::CStr::from_ptr(path)))
    }
}

/// True when the `search_path` setting is the pinned path itself (the workers', an outer
/// `PinnedSearchPath`): it names neither `"$user"` nor `pg_temp`, so it resolves alike for
/// every role.
pub fn search_path_is_pinned() -> bool {
    with_pinned_path(|path| with_current_search_path(|current| path == current))
        .flatten()
        .unwrap_or(false)
}

/// True when name lookups under the current `search_path`, for the current role, already go
/// where they would under the pinned path, so that pinning would change no lookup: the path
/// resolves to exactly `pg_catalog`, then the extension's schema (the default `"$user",
/// public` does, for a role without a schema of its name, when the extension is in `public`),
/// and it does not name `pg_temp` (the session's temporary schema, if any, is then searched
/// first under both; `fetch_search_path_array` leaves it out). Only the default creation
/// schema differs, and a refresh creates nothing. Cheap: the writer's own statement has just
/// computed the path, and nothing is set.
pub fn search_path_resolves_as_pinned() -> bool {
    let names_temp = with_current_search_path(|current| {
        current
            .to_bytes()
            .windows(7)
            .any(|w| w.eq_ignore_ascii_case(b"pg_temp"))
    });
    if names_temp != Some(false) {
        return false;
    }
    let Some(schema) = state::cached_schema_oid() else {
        return false;
    };
    let mut path = [pg_sys::InvalidOid; 3];
    // SAFETY: fills at most 3 entries of `path` with the active path's schemas (without the
    // temporary one), recomputing it first only if a setting or a schema changed.
    let count = unsafe { pg_sys::fetch_search_path_array(path.as_mut_ptr(), path.len() as i32) };
    count == 2 && path[0] == pg_sys::Oid::from(pg_sys::PG_CATALOG_NAMESPACE) && path[1] == schema
}

/// The current user switched to another role until dropped, with extra security-context
/// flags. Restored on drop (also while an ERROR unwinds; a (sub)transaction abort restores it
/// as well).
pub struct SwitchedUser {
    saved: Option<(pg_sys::Oid, i32)>,
}

impl SwitchedUser {
    pub fn to(role: pg_sys::Oid, flags: i32) -> SwitchedUser {
        let mut user = pg_sys::InvalidOid;
        let mut context = 0;
        // SAFETY: plain reads and writes of the backend's current user id, the way PostgreSQL's
        // own maintenance code switches to a table's owner.
        unsafe {
            pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
            pg_sys::SetUserIdAndSecContext(role, context | flags);
        }
        SwitchedUser {
            saved: Some((user, context)),
        }
    }

    fn none() -> SwitchedUser {
        SwitchedUser { saved: None }
    }
}

impl Drop for SwitchedUser {
    fn drop(&mut self) {
        if let Some((user, context)) = self.saved {
            // SAFETY: restores the values saved in to().
            unsafe { pg_sys::SetUserIdAndSecContext(user, context) };
        }
    }
}

/// Runs the extension's own writes to its metadata tables (`pg_tview_meta`, `pg_tview_lineage`,
/// `pg_tview_deferred`) as the extension's owner: nobody else may write those tables, so a
/// role can neither squat a TVIEW name nor rewrite another's lineage; the functions that
/// call this check ownership of the TVIEW themselves. A no-op for superusers (the workers).
pub fn as_extension_owner() -> SwitchedUser {
    // SAFETY: reads the current user's superuser flag from the syscache.
    if unsafe { pg_sys::superuser() } {
        return SwitchedUser::none();
    }
    let owner = Spi::get_one::<pg_sys::Oid>(
        "SELECT extowner FROM pg_catalog.pg_extension WHERE extname = 'pg_tviews_bgw'",
    )
    .ok()
    .flatten();
    match owner {
        Some(owner) => SwitchedUser::to(owner, pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32),
        None => SwitchedUser::none(),
    }
}

/// TVIEWs whose metadata names no live table or view (restored from a dump into another
/// database, where the object ids are stale or even another relation's, or damaged): nothing
/// maintains them. `entity, entity, ...`, or `None`.
pub fn unmaintained_tviews() -> Option<String> {
    Spi::get_one::<String>(
        "SELECT string_agg(entity, ', ' ORDER BY entity) FROM pg_tview_meta m \
         WHERE NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = m.table_oid AND c.relkind = 'r' \
                           AND c.relname = 'tv_' || m.entity) \
            OR NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = m.view_oid AND c.relkind = 'v' \
                           AND c.relname = 'v_' || m.entity)",
    )
    .ok()
    .flatten()
}

/// True when new sessions of this database start read-only: `default_transaction_read_only`
/// on in the configuration (its value before any SET of this session), or set by ALTER
/// DATABASE / ALTER ROLE for this database or the session's role.
pub fn database_read_only() -> bool {
    Spi::get_one::<bool>(
        "SELECT coalesce((SELECT reset_val = 'on' FROM pg_catalog.pg_settings \
                          WHERE name = 'default_transaction_read_only'), false) \
             OR EXISTS (SELECT 1 FROM pg_catalog.pg_db_role_setting s, unnest(s.setconfig) c(setting) \
                        WHERE s.setdatabase IN (0, (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())) \
                          AND s.setrole IN (0, (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = session_user)) \
                          AND lower(c.setting) IN ('default_transaction_read_only=on', 'default_transaction_read_only=true', \
                                                   'default_transaction_read_only=yes', 'default_transaction_read_only=1'))",
    )
    .ok()
    .flatten()
    .unwrap_or(false)
}

/// True when this database's extension schema has `column` in `pg_tview_meta` (a schema not
/// yet updated by `ALTER EXTENSION ... UPDATE` lacks the newer ones; the library serves both).
pub fn meta_has_column(column: &str) -> bool {
    Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute \
                        WHERE attrelid = to_regclass('pg_tview_meta') AND attname = $1 AND NOT attisdropped)",
        &[column.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false)
}

/// Shape of the TVIEW whose table has `table_oid`, or `None` if it is not (any more) a TVIEW.
/// A dropped table or view makes it `None`: existence is checked by oid, not with
/// `to_regclass(oid::regclass::text)`, which from PostgreSQL 16 on takes the digits a
/// dropped relation prints as for an oid and returns it (the refresh then ran SQL naming
/// the view as a number: a syntax error in a loop, and a deadlock with `pg_tviews_repair`).
pub fn load_shape(
    client: &SpiClient<'_>,
    table_oid: pg_sys::Oid,
) -> spi::Result<Option<TviewShape>> {
    let meta = client.select(
        "SELECT m.table_oid::regclass::text, m.view_oid::regclass::text, quote_ident(m.key_column), \
                (SELECT c.oid::regclass::text FROM pg_class c WHERE c.oid = m.root_table), \
                quote_ident(coalesce(to_jsonb(m) ->> 'root_key', m.key_column)) \
         FROM pg_tview_meta m \
         WHERE m.table_oid = $1 \
           AND EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = m.table_oid) \
           AND EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = m.view_oid)",
        None,
        &[table_oid.into()],
    )?;
    let Some(row) = meta.into_iter().next() else {
        return Ok(None);
    };
    let table: String = row.get(1)?.unwrap_or_default();
    let view: String = row.get(2)?.unwrap_or_default();
    let key: String = row.get(3)?.unwrap_or_default();
    let root: Option<String> = row.get(4)?;
    let root_key: String = row.get(5)?.unwrap_or_else(|| key.clone());
    let columns = client.select(
        "SELECT quote_ident(attname) FROM pg_attribute \
         WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        None,
        &[table_oid.into()],
    )?;
    let mut values = Vec::new();
    for row in columns {
        let name: String = row.get(1)?.unwrap_or_default();
        if name != key {
            values.push(name);
        }
    }
    Ok(Some(TviewShape {
        table,
        view,
        key,
        root_key,
        values,
        root,
    }))
}

/// Raises `undefined_table` when `table_oid` is a TVIEW whose backing view was dropped behind
/// the extension's back (`load_shape` gave `None`): its keys are deferred with this error, so
/// `pg_tviews_wait` is false and they turn into dead letters, instead of being dropped as a
/// dropped TVIEW's are; a sync-mode write fails. `pg_tviews_repair` recreates the view.
pub fn raise_if_view_missing(client: &SpiClient<'_>, table_oid: pg_sys::Oid) -> spi::Result<()> {
    let entity = client
        .select(
            "SELECT m.entity FROM pg_tview_meta m \
             WHERE m.table_oid = $1 \
               AND EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = m.table_oid) \
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = m.view_oid)",
            None,
            &[table_oid.into()],
        )?
        .first()
        .get_one::<String>()?;
    if let Some(entity) = entity {
        crate::errors::raise(
            pgrx::PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!("the backing view of TVIEW \"tv_{entity}\" is missing: its rows are not refreshed"),
            None,
            Some(&format!(
                "SELECT pg_tviews_repair('{entity}'); recreates v_{entity} from the recorded definition and recomputes tv_{entity}."
            )),
        );
    }
    Ok(())
}

/// Every TVIEW table of this database, in creation order.
pub fn all_tviews(client: &SpiClient<'_>) -> spi::Result<Vec<pg_sys::Oid>> {
    let rows = client.select(
        "SELECT table_oid FROM pg_tview_meta ORDER BY created_at, entity",
        None,
        &[],
    )?;
    let mut out = Vec::new();
    for row in rows {
        if let Some(oid) = row.get::<pg_sys::Oid>(1)? {
            out.push(oid);
        }
    }
    Ok(out)
}

/// The query that maps captured values of lineage rule `rule` to TVIEW keys (`$1 bigint[]`).
pub fn resolve_sql(
    client: &SpiClient<'_>,
    table_oid: pg_sys::Oid,
    rule: u32,
) -> spi::Result<Option<String>> {
    let rows = client.select(
        "SELECT resolve_sql FROM pg_tview_lineage WHERE tview_oid = $1 AND rule = $2",
        None,
        &[table_oid.into(), (rule as i32).into()],
    )?;
    match rows.into_iter().next() {
        Some(row) => row.get::<String>(1),
        None => Ok(None),
    }
}

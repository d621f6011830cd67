//! Reads of the `pg_tview_meta` catalog and of PostgreSQL's own catalogs about a TVIEW.
//! SPI only; runs in user backends (create/drop) and in drainers (inside their transaction).

pub mod lineage;

use crate::refresh::sql::TviewShape;
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
    Spi::get_one::<String>(
        "SELECT n.nspname::text FROM pg_catalog.pg_extension e \
         JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace \
         WHERE e.extname = 'pg_tviews_bgw'",
    )
    .ok()
    .flatten()
}

/// Shape of the TVIEW whose table has `table_oid`, or `None` if it is not (any more) a TVIEW.
pub fn load_shape(
    client: &SpiClient<'_>,
    table_oid: pg_sys::Oid,
) -> spi::Result<Option<TviewShape>> {
    let meta = client.select(
        "SELECT m.table_oid::regclass::text, m.view_oid::regclass::text, quote_ident(m.key_column), \
                (SELECT c.oid::regclass::text FROM pg_class c WHERE c.oid = m.root_table) \
         FROM pg_tview_meta m \
         WHERE m.table_oid = $1 \
           AND to_regclass(m.table_oid::regclass::text) IS NOT NULL \
           AND to_regclass(m.view_oid::regclass::text) IS NOT NULL",
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
        values,
        root,
    }))
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

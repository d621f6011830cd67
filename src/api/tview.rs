//! `pg_tviews_create` / `pg_tviews_drop` / `pg_tviews_refresh`: the TVIEW life cycle, run in the
//! calling user backend inside its transaction, so a failure leaves nothing half-created.

use crate::catalog::lineage;
use crate::errors::raise;
use crate::queue::kind;
use crate::{catalog, queue, refresh};
use pgrx::prelude::*;
use pgrx::spi::{quote_identifier, quote_literal};
use pgrx::PgSqlErrorCode as Code;

/// Trigger names installed on source tables, per TVIEW entity.
pub fn trigger_names(entity: &str) -> [String; 5] {
    ["ins", "upd", "del", "trunc", "full"].map(|suffix| format!("tview_{entity}_{suffix}"))
}

/// Accepts `tv_post` or `post`; returns the entity (`post`).
pub fn entity_of(name: &str) -> String {
    let name = name.trim();
    name.strip_prefix("tv_").unwrap_or(name).to_string()
}

fn valid_entity(entity: &str) -> bool {
    let mut chars = entity.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && entity.len() + "tview__trunc".len() <= 63
}

fn get_oid(sql: &str, args: &[pgrx::datum::DatumWithOid]) -> Option<pg_sys::Oid> {
    Spi::get_one_with_args::<pg_sys::Oid>(sql, args)
        .ok()
        .flatten()
}

thread_local! {
    /// Set while this backend itself creates or drops TVIEW objects, so the DDL event triggers
    /// (CREATE TABLE tv_x AS / DROP TABLE tv_x) leave that DDL alone.
    static BUSY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks this backend busy with TVIEW DDL until dropped (also when an ERROR unwinds).
pub struct BusyGuard(bool);

impl BusyGuard {
    pub fn enter() -> BusyGuard {
        BusyGuard(BUSY.with(|b| b.replace(true)))
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        BUSY.with(|b| b.set(self.0));
    }
}

pub fn busy() -> bool {
    BUSY.with(|b| b.get())
}

/// Creates `tv_<entity>` materialized from `query`, with its backing view `v_<entity>`, the
/// capture triggers on every source table, and its `pg_tview_meta` row.
#[pg_extern(volatile, parallel_unsafe)]
fn pg_tviews_create(name: &str, query: &str) -> String {
    let _busy = BusyGuard::enter();
    create(name, query)
}

/// Creates a TVIEW in the caller's transaction (pg_tviews_create and CREATE TABLE tv_x AS).
pub fn create(name: &str, query: &str) -> String {
    let entity = entity_of(name);
    if !name.trim().starts_with("tv_") || !valid_entity(&entity) {
        raise(
            Code::ERRCODE_INVALID_NAME,
            format!("invalid TVIEW name \"{name}\""),
            Some("The name must be tv_<entity>, with a lower-case identifier of at most 51 characters as <entity>."),
            Some("Example: SELECT pg_tviews_create('tv_post', 'SELECT pk_post, id, jsonb_build_object(...) AS data FROM tb_post');"),
        );
    }
    let table = format!("tv_{entity}");
    let view = format!("v_{entity}");
    let key = format!("pk_{entity}");
    if get_oid(
        "SELECT table_oid FROM pg_tview_meta WHERE entity = $1",
        &[entity.as_str().into()],
    )
    .is_some()
    {
        raise(
            Code::ERRCODE_DUPLICATE_OBJECT,
            format!("TVIEW \"{table}\" already exists"),
            None,
            Some("Drop it first with pg_tviews_drop(), or choose another name."),
        );
    }
    for relation in [&table, &view] {
        if get_oid(
            "SELECT to_regclass($1)::oid",
            &[quote_identifier(relation).as_str().into()],
        )
        .is_some()
        {
            raise(
                Code::ERRCODE_DUPLICATE_TABLE,
                format!("relation \"{relation}\" already exists"),
                Some(
                    "pg_tviews_create() creates both tv_<entity> and its backing view v_<entity>.",
                ),
                Some("Drop or rename the existing relation, or choose another TVIEW name."),
            );
        }
    }
    let query = query.trim().trim_end_matches(';');
    run_sql(&format!(
        "CREATE VIEW {} AS {query}",
        quote_identifier(&view)
    ));
    let view_oid = get_oid(
        "SELECT to_regclass($1)::oid",
        &[quote_identifier(&view).as_str().into()],
    )
    .expect("backing view was just created");

    let key_type = get_oid(
        "SELECT atttypid FROM pg_attribute WHERE attrelid = $1 AND attname = $2 AND NOT attisdropped",
        &[view_oid.into(), key.as_str().into()],
    );
    match key_type {
        Some(t) if [pg_sys::INT2OID, pg_sys::INT4OID, pg_sys::INT8OID].contains(&t) => {}
        Some(_) => raise(
            Code::ERRCODE_INVALID_TABLE_DEFINITION,
            format!("column \"{key}\" of the TVIEW query must be an integer"),
            None,
            Some("TVIEW keys follow the trinity convention: pk_<entity> integer or bigint."),
        ),
        None => raise(
            Code::ERRCODE_INVALID_TABLE_DEFINITION,
            format!("the TVIEW query does not return a column named \"{key}\""),
            Some("Every TVIEW is keyed by pk_<entity>."),
            Some(&format!("Add {key} to the select list, e.g. SELECT tb_{entity}.{key}, ... FROM tb_{entity}.")),
        ),
    }

    let data_type = get_oid(
        "SELECT atttypid FROM pg_attribute WHERE attrelid = $1 AND attname = 'data' AND NOT attisdropped",
        &[view_oid.into()],
    );
    match data_type {
        Some(t) if t == pg_sys::JSONBOID => {}
        Some(_) => raise(
            Code::ERRCODE_INVALID_TABLE_DEFINITION,
            "column \"data\" of the TVIEW query must be jsonb",
            None,
            Some("Build the read model with jsonb_build_object(...) AS data (json has no equality operator)."),
        ),
        None => raise(
            Code::ERRCODE_INVALID_TABLE_DEFINITION,
            "the TVIEW query does not return a column named \"data\"",
            Some("A TVIEW holds its read model in a jsonb column named data."),
            Some("Add e.g. jsonb_build_object('id', id, ...) AS data to the select list."),
        ),
    }

    let sources = source_tables(view_oid);
    let root = sources
        .iter()
        .find(|s| s.name == format!("tb_{entity}") && s.has_key)
        .or_else(|| {
            let keyed: Vec<_> = sources.iter().filter(|s| s.has_key).collect();
            (keyed.len() == 1).then(|| keyed[0])
        })
        .cloned();
    let Some(root) = root else {
        raise(
            Code::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("cannot find the root table of TVIEW \"{table}\""),
            Some(&format!(
                "No table read by the query has a column named \"{key}\"."
            )),
            Some(&format!(
                "Select from tb_{entity}, whose primary key is {key}."
            )),
        );
    };

    let materialize = format!(
        "CREATE TABLE {t} AS SELECT * FROM {v}; ALTER TABLE {t} ADD PRIMARY KEY ({k})",
        t = quote_identifier(&table),
        v = quote_identifier(&view),
        k = quote_identifier(&key)
    );
    let bad_key = |problem: &str| -> ! {
        raise(
            Code::ERRCODE_INVALID_TABLE_DEFINITION,
            format!("the TVIEW query returns {problem} values of \"{key}\""),
            Some("A TVIEW has exactly one row per key."),
            Some(&format!(
                "Make {key} unique and not null in the query's result, e.g. select it from tb_{entity}'s primary key."
            )),
        )
    };
    PgTryBuilder::new(|| run_sql(&materialize))
        .catch_when(Code::ERRCODE_UNIQUE_VIOLATION, |_| bad_key("duplicate"))
        .catch_when(Code::ERRCODE_NOT_NULL_VIOLATION, |_| bad_key("NULL"))
        .execute();
    let table_oid = get_oid(
        "SELECT to_regclass($1)::oid",
        &[quote_identifier(&table).as_str().into()],
    )
    .expect("TVIEW table was just created");

    let tables: Vec<lineage::Table> = sources
        .iter()
        .map(|s| lineage::Table {
            oid: s.oid.to_u32(),
            qualified: s.qualified.clone(),
        })
        .collect();
    let edges = reference_edges(&sources);
    let root_table = tables
        .iter()
        .find(|t| t.oid == root.oid.to_u32())
        .expect("root is a source")
        .clone();
    let schema = quote_identifier(extension_schema());
    let oid = table_oid.to_u32();
    let mut next_rule = kind::FIRST_RULE;
    let mut full_sources = Vec::new();
    for source in &tables {
        let captures = match lineage::plan(&root_table, &key, source, &tables, &edges) {
            lineage::Plan::Captures(captures) => captures
                .into_iter()
                .map(|c| {
                    let rule = if c.resolve_sql.is_some() {
                        next_rule += 1;
                        next_rule - 1
                    } else {
                        kind::ROW
                    };
                    (c.column, rule, c.resolve_sql, c.description)
                })
                .collect::<Vec<_>>(),
            lineage::Plan::Full { reason } => {
                full_sources.push(format!("{} ({reason})", source.qualified));
                vec![(
                    String::new(),
                    kind::FULL,
                    None,
                    format!("full refresh: {reason}"),
                )]
            }
        };
        let columns: Vec<(String, u32)> = captures
            .iter()
            .map(|(c, r, _, _)| (c.clone(), *r))
            .collect();
        install_capture_triggers(&entity, &schema, oid, false, &source.qualified, &columns);
        for (column, rule, resolve_sql, description) in captures {
            Spi::run_with_args(
                "INSERT INTO pg_tview_lineage (tview_oid, source_oid, rule, capture_column, resolve_sql, description) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    table_oid.into(),
                    pg_sys::Oid::from(source.oid).into(),
                    (rule as i32).into(),
                    column.as_str().into(),
                    resolve_sql.into(),
                    description.as_str().into(),
                ],
            )
            .unwrap_or_else(|e| raise(Code::ERRCODE_INTERNAL_ERROR, format!("could not record lineage: {e}"), None, None));
        }
    }
    if !full_sources.is_empty() {
        crate::errors::warn(
            Code::ERRCODE_WARNING,
            format!(
                "changes to {} will fully refresh TVIEW \"{table}\"",
                full_sources.join(", ")
            ),
            "Declare a single-column foreign key (or use fk_<x> -> pk_<x> integer columns) between that table and the TVIEW's root table.",
        );
    }
    create_tview_indexes(&table, table_oid);

    let dependencies: Vec<pg_sys::Oid> = sources.iter().map(|s| s.oid).collect();
    let fk_columns = Spi::get_one_with_args::<Vec<String>>(
        "SELECT coalesce(array_agg(attname::text ORDER BY attnum), '{}') FROM pg_attribute \
         WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped AND attname LIKE 'fk\\_%'",
        &[view_oid.into()],
    )
    .ok()
    .flatten()
    .unwrap_or_default();
    Spi::run_with_args(
        "INSERT INTO pg_tview_meta (entity, table_oid, view_oid, definition, dependencies, fk_columns, key_column, root_table) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            entity.as_str().into(),
            table_oid.into(),
            view_oid.into(),
            query.into(),
            dependencies.into(),
            fk_columns.into(),
            key.as_str().into(),
            root.oid.into(),
        ],
    )
    .unwrap_or_else(|e| raise(Code::ERRCODE_INTERNAL_ERROR, format!("could not record TVIEW metadata: {e}"), None, None));

    if let Err(e) = refresh::validate(table_oid) {
        raise(
            Code::ERRCODE_INVALID_TABLE_DEFINITION,
            format!("TVIEW \"{table}\" could not be refreshed incrementally: {e}"),
            None,
            Some("Every column type must support equality (use jsonb rather than json)."),
        );
    }
    if !attach_current_database() && !queue::is_attached() {
        crate::errors::warn(
            Code::ERRCODE_WARNING,
            format!("TVIEW \"{table}\" will be refreshed synchronously, inside each writing statement"),
            "Add pg_tviews_bgw to shared_preload_libraries and restart PostgreSQL for background refresh.",
        );
    }
    table
}

#[derive(Clone, Debug)]
struct SourceTable {
    oid: pg_sys::Oid,
    name: String,
    qualified: String,
    has_key: bool,
}

/// Installs the statement-level triggers that capture `columns` (name, queue entry kind) of
/// `source` for the TVIEW. A single empty column means any change recomputes the whole TVIEW
/// (one trigger, no transition tables).
pub fn install_capture_triggers(
    entity: &str,
    schema: &str,
    tview_oid: u32,
    sync: bool,
    source: &str,
    columns: &[(String, u32)],
) {
    let [ins, upd, del, trunc, full] = trigger_names(entity);
    let mut args = vec![if sync {
        format!("'{tview_oid}:sync'")
    } else {
        format!("'{tview_oid}'")
    }];
    for (column, rule) in columns {
        args.push(quote_literal(column));
        args.push(format!("'{rule}'"));
    }
    let function = format!("{schema}.pg_tviews_capture({})", args.join(", "));
    let statements = if columns.iter().all(|(c, _)| c.is_empty()) {
        vec![format!(
            "CREATE TRIGGER {full} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {source} \
             FOR EACH STATEMENT EXECUTE FUNCTION {function}"
        )]
    } else {
        vec![
            format!(
                "CREATE TRIGGER {ins} AFTER INSERT ON {source} REFERENCING NEW TABLE AS tview_new \
                 FOR EACH STATEMENT EXECUTE FUNCTION {function}"
            ),
            format!(
                "CREATE TRIGGER {upd} AFTER UPDATE ON {source} REFERENCING OLD TABLE AS tview_old NEW TABLE AS tview_new \
                 FOR EACH STATEMENT EXECUTE FUNCTION {function}"
            ),
            format!(
                "CREATE TRIGGER {del} AFTER DELETE ON {source} REFERENCING OLD TABLE AS tview_old \
                 FOR EACH STATEMENT EXECUTE FUNCTION {function}"
            ),
            format!(
                "CREATE TRIGGER {trunc} AFTER TRUNCATE ON {source} \
                 FOR EACH STATEMENT EXECUTE FUNCTION {function}"
            ),
        ]
    };
    for statement in statements {
        run_sql(&statement);
    }
}

/// Single-column integer references among the source tables: declared foreign keys plus the
/// `fk_<x>` -> `pk_<x>` naming convention (which also links TVIEWs such as `tv_user`).
fn reference_edges(sources: &[SourceTable]) -> Vec<lineage::Edge> {
    let oids: Vec<pg_sys::Oid> = sources.iter().map(|s| s.oid).collect();
    let result = Spi::connect(|client| {
        let rows = client.select(
            "SELECT c.conrelid, a.attname::text, c.confrelid, af.attname::text \
             FROM pg_constraint c \
             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1] \
             JOIN pg_attribute af ON af.attrelid = c.confrelid AND af.attnum = c.confkey[1] \
             WHERE c.contype = 'f' AND cardinality(c.conkey) = 1 \
               AND c.conrelid = ANY($1) AND c.confrelid = ANY($1) \
               AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype) \
               AND af.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype) \
             UNION \
             SELECT a.attrelid, a.attname::text, b.attrelid, b.attname::text \
             FROM pg_attribute a \
             JOIN pg_attribute b ON b.attname = 'pk_' || substr(a.attname, 4) \
             WHERE a.attrelid = ANY($1) AND b.attrelid = ANY($1) AND a.attrelid <> b.attrelid \
               AND a.attname LIKE 'fk\\_%' AND a.attnum > 0 AND b.attnum > 0 \
               AND NOT a.attisdropped AND NOT b.attisdropped \
               AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype) \
               AND b.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype) \
             ORDER BY 1, 2, 3, 4",
            None,
            &[oids.into()],
        )?;
        let mut edges = Vec::new();
        for row in rows {
            edges.push(lineage::Edge {
                from_table: row
                    .get::<pg_sys::Oid>(1)?
                    .unwrap_or(pg_sys::InvalidOid)
                    .to_u32(),
                from_column: row.get::<String>(2)?.unwrap_or_default(),
                to_table: row
                    .get::<pg_sys::Oid>(3)?
                    .unwrap_or(pg_sys::InvalidOid)
                    .to_u32(),
                to_column: row.get::<String>(4)?.unwrap_or_default(),
            });
        }
        Ok::<_, spi::Error>(edges)
    });
    result.unwrap_or_else(|e| {
        raise(
            Code::ERRCODE_INTERNAL_ERROR,
            format!("could not read foreign keys: {e}"),
            None,
            None,
        )
    })
}

/// Indexes readers and the refresh need: `id` and every `fk_*` column of the TVIEW table.
fn create_tview_indexes(table: &str, table_oid: pg_sys::Oid) {
    let columns = Spi::get_one_with_args::<Vec<String>>(
        "SELECT coalesce(array_agg(attname::text ORDER BY attnum), '{}') FROM pg_attribute \
         WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped AND (attname = 'id' OR attname LIKE 'fk\\_%')",
        &[table_oid.into()],
    )
    .ok()
    .flatten()
    .unwrap_or_default();
    for column in columns {
        run_sql(&format!(
            "CREATE INDEX ON {} ({})",
            quote_identifier(table),
            quote_identifier(&column)
        ));
    }
}

/// Runs DDL whose SQL errors should reach the user unchanged (SPI raises those directly).
fn run_sql(sql: &str) {
    if let Err(e) = Spi::run(sql) {
        raise(
            Code::ERRCODE_INTERNAL_ERROR,
            format!("SPI failure: {e}"),
            None,
            None,
        );
    }
}

/// Tables the view reads, following nested views, from `pg_depend` (not from the query text).
fn source_tables(view_oid: pg_sys::Oid) -> Vec<SourceTable> {
    let key_column = Spi::get_one_with_args::<String>(
        "SELECT 'pk_' || substr(relname, 3) FROM pg_class WHERE oid = $1",
        &[view_oid.into()],
    )
    .ok()
    .flatten()
    .unwrap_or_default();
    Spi::connect(|client| {
        let rows = client.select(
            "WITH RECURSIVE deps(relid) AS ( \
               SELECT $1::oid \
               UNION \
               SELECT d.refobjid FROM deps \
               JOIN pg_rewrite r ON r.ev_class = deps.relid \
               JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid \
                               AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> deps.relid \
             ) \
             SELECT c.oid, c.relname::text, c.oid::regclass::text, \
                    EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = $2 AND NOT a.attisdropped) \
             FROM deps JOIN pg_class c ON c.oid = deps.relid \
             WHERE c.relkind IN ('r', 'p') ORDER BY c.oid",
            None,
            &[view_oid.into(), key_column.as_str().into()],
        )?;
        let mut out = Vec::new();
        for row in rows {
            out.push(SourceTable {
                oid: row.get(1)?.unwrap_or(pg_sys::InvalidOid),
                name: row.get(2)?.unwrap_or_default(),
                qualified: row.get(3)?.unwrap_or_default(),
                has_key: row.get(4)?.unwrap_or(false),
            });
        }
        Ok::<_, spi::Error>(out)
    })
    .unwrap_or_else(|e| raise(Code::ERRCODE_INTERNAL_ERROR, format!("could not read view dependencies: {e}"), None, None))
}

pub fn extension_schema() -> String {
    catalog::extension_schema().unwrap_or_else(|| "public".to_string())
}

/// Raises `insufficient_privilege` unless the current user may manage the TVIEW whose table is
/// `table_oid` (a member of the role that owns it, or a superuser), like ALTER TABLE does.
pub fn require_owner(table_oid: pg_sys::Oid, entity: &str) {
    let allowed = Spi::get_one_with_args::<bool>(
        "SELECT pg_catalog.pg_has_role(c.relowner, 'USAGE') FROM pg_catalog.pg_class c WHERE c.oid = $1",
        &[table_oid.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(true);
    if !allowed {
        raise(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("must be owner of TVIEW \"tv_{entity}\""),
            None,
            Some("Only members of the role that owns the TVIEW table (or superusers) can drop, refresh, pause, resume, retry or change the mode of it."),
        );
    }
}

/// Drops the TVIEW table, its backing view, its capture triggers and its metadata.
#[pg_extern(volatile, parallel_unsafe)]
fn pg_tviews_drop(name: &str, if_exists: default!(bool, false)) -> bool {
    let _busy = BusyGuard::enter();
    let entity = entity_of(name);
    let row = Spi::get_two_with_args::<pg_sys::Oid, Vec<pg_sys::Oid>>(
        "SELECT table_oid, dependencies FROM pg_tview_meta WHERE entity = $1",
        &[entity.as_str().into()],
    );
    let dependencies = match row {
        Ok((Some(table_oid), deps)) => {
            require_owner(table_oid, &entity);
            deps.unwrap_or_default()
        }
        _ => {
            if if_exists {
                pgrx::ereport!(
                    NOTICE,
                    Code::ERRCODE_SUCCESSFUL_COMPLETION,
                    format!("TVIEW \"tv_{entity}\" does not exist, skipping")
                );
                return false;
            }
            raise(
                Code::ERRCODE_UNDEFINED_TABLE,
                format!("TVIEW \"tv_{entity}\" does not exist"),
                None,
                Some("List TVIEWs with: SELECT entity FROM pg_tview_meta;"),
            );
        }
    };
    drop_objects(&entity, dependencies, true);
    true
}

/// Removes what a TVIEW owns: capture triggers on its sources, the backing view, optionally the
/// table (not when DROP TABLE already did), its lineage and metadata.
pub fn drop_objects(entity: &str, dependencies: Vec<pg_sys::Oid>, drop_table: bool) {
    // Catalog rows first, before any table lock: the worker may hold row locks on them while it
    // waits for a source table; taking the DDL locks first would deadlock with it.
    Spi::run_with_args(
        "WITH gone AS (SELECT table_oid FROM pg_tview_meta WHERE entity = $1), \
              l AS (DELETE FROM pg_tview_lineage WHERE tview_oid IN (SELECT table_oid FROM gone)) \
         DELETE FROM pg_tview_deferred WHERE tview_oid IN (SELECT table_oid FROM gone)",
        &[entity.into()],
    )
    .unwrap_or_else(|e| {
        raise(
            Code::ERRCODE_INTERNAL_ERROR,
            format!("could not remove TVIEW lineage: {e}"),
            None,
            None,
        )
    });
    Spi::run_with_args(
        "DELETE FROM pg_tview_meta WHERE entity = $1",
        &[entity.into()],
    )
    .unwrap_or_else(|e| {
        raise(
            Code::ERRCODE_INTERNAL_ERROR,
            format!("could not remove TVIEW metadata: {e}"),
            None,
            None,
        )
    });
    for dependency in dependencies {
        // A source table dropped meanwhile took its triggers with it.
        let Ok(Some(relation)) = Spi::get_one_with_args::<String>(
            "SELECT oid::regclass::text FROM pg_class WHERE oid = $1",
            &[dependency.into()],
        ) else {
            continue;
        };
        for trigger in trigger_names(entity) {
            let exists = Spi::get_one_with_args::<bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = $1 AND tgname = $2)",
                &[dependency.into(), trigger.as_str().into()],
            );
            if !matches!(exists, Ok(Some(true))) {
                continue;
            }
            Spi::run(&format!(
                "DROP TRIGGER {} ON {relation}",
                quote_identifier(&trigger)
            ))
            .unwrap_or_else(|e| {
                raise(
                    Code::ERRCODE_INTERNAL_ERROR,
                    format!("could not drop trigger {trigger}: {e}"),
                    None,
                    None,
                )
            });
        }
    }
    let table = if drop_table {
        format!(
            "DROP TABLE IF EXISTS {}; ",
            quote_identifier(format!("tv_{entity}"))
        )
    } else {
        String::new()
    };
    Spi::run(&format!(
        "{table}DROP VIEW IF EXISTS {}",
        quote_identifier(format!("v_{entity}"))
    ))
    .unwrap_or_else(|e| {
        raise(
            Code::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
            format!("could not drop TVIEW \"tv_{entity}\": {e}"),
            None,
            Some("Drop the objects that depend on it first."),
        )
    });
}

/// Recomputes a whole TVIEW now, in the caller's transaction; returns the rows written.
#[pg_extern(volatile, parallel_unsafe)]
fn pg_tviews_refresh(name: &str) -> i64 {
    let entity = entity_of(name);
    let Some(table_oid) = get_oid(
        "SELECT table_oid FROM pg_tview_meta WHERE entity = $1",
        &[entity.as_str().into()],
    ) else {
        raise(
            Code::ERRCODE_UNDEFINED_TABLE,
            format!("TVIEW \"tv_{entity}\" does not exist"),
            None,
            Some("List TVIEWs with: SELECT entity FROM pg_tview_meta;"),
        );
    };
    require_owner(table_oid, &entity);
    // A worker batch running concurrently could write rows from an older snapshot after this
    // refresh; queueing a full refresh makes the worker's, which runs after our commit, last.
    if queue::is_attached() {
        crate::capture::staging::stage([crate::capture::staging::StagedKey {
            tview_oid: table_oid.to_u32(),
            kind: kind::FULL,
            key: 0,
        }]);
    }
    match refresh::refresh_one(table_oid) {
        Ok(Some(rows)) => rows as i64,
        Ok(None) => 0,
        Err(e) => raise(
            Code::ERRCODE_INTERNAL_ERROR,
            format!("refresh of \"tv_{entity}\" failed: {e}"),
            None,
            None,
        ),
    }
}

/// Gives this database a worker slot when the current transaction commits and wakes the
/// launcher (run by CREATE EXTENSION and pg_tviews_create). At commit, not now: a worker that
/// started before the extension's creation committed would find no extension and leave.
pub fn attach_current_database() -> bool {
    if !queue::is_attached() {
        return false;
    }
    let is_template = Spi::get_one::<bool>("SELECT datistemplate FROM pg_database WHERE oid = (SELECT oid FROM pg_database WHERE datname = current_database())")
        .ok()
        .flatten()
        .unwrap_or(false);
    if is_template || !catalog::extension_installed() {
        return false;
    }
    crate::capture::staging::attach_at_commit();
    true
}

#[pg_extern(volatile)]
fn _pg_tviews_attach_database() -> bool {
    if !queue::is_attached() {
        crate::errors::warn(
            Code::ERRCODE_WARNING,
            "pg_tviews_bgw is not loaded through shared_preload_libraries; TVIEWs will not be refreshed in the background",
            "Add pg_tviews_bgw to shared_preload_libraries in postgresql.conf and restart PostgreSQL.",
        );
        return false;
    }
    attach_current_database()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_accepts_both_spellings() {
        assert_eq!(entity_of("tv_post"), "post");
        assert_eq!(entity_of("post"), "post");
        assert!(valid_entity("post_2"));
        assert!(!valid_entity("Post"));
        assert!(!valid_entity("2post"));
        assert!(!valid_entity("po-st"));
        assert!(!valid_entity(""));
    }
}

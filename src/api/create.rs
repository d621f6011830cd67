//! Creating a TVIEW (`pg_tviews_create` and `CREATE TABLE tv_x AS`), in named steps: name,
//! view, columns, analysis (refuse what cannot be captured), root, materialize, lineage and
//! triggers, metadata. Runs in the calling user backend inside its transaction, so a refusal or
//! failure at any step leaves nothing half-created.
//!
//! Only the backing view is created with the caller's `search_path` (the definition's names
//! resolve as the user wrote them); every later step runs with the path pinned to the
//! extension, and every statement stored for later (lineage SQL, trigger arguments) names its
//! relations schema-qualified.

use super::triggers;
use crate::catalog::{analyze, lineage, PinnedSearchPath};
use crate::errors::{raise, Error};
use crate::queue::kind;
use crate::{queue, refresh};
use pgrx::prelude::*;
use pgrx::spi::quote_identifier;
use pgrx::PgSqlErrorCode as Code;

/// PostgreSQL truncates identifiers to this many bytes.
const MAX_IDENTIFIER: usize = 63;

/// Accepts `tv_post`, `post`, `app.tv_post` or `app.post`; returns the entity (`post`).
pub fn entity_of(name: &str) -> String {
    let name = name.trim();
    let name = name.rsplit('.').next().unwrap_or(name);
    name.strip_prefix("tv_").unwrap_or(name).to_string()
}

pub fn valid_entity(entity: &str) -> bool {
    let mut chars = entity.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && entity.len() + "tview__trunc".len() <= MAX_IDENTIFIER
}

/// Where a new TVIEW goes: `<schema>.tv_<entity>` and `<schema>.v_<entity>`.
pub struct Target {
    pub schema: String,
    pub entity: String,
}

impl Target {
    pub fn table(&self) -> String {
        format!(
            "{}.{}",
            quote_identifier(&self.schema),
            quote_identifier(format!("tv_{}", self.entity))
        )
    }

    pub fn view(&self) -> String {
        format!(
            "{}.{}",
            quote_identifier(&self.schema),
            quote_identifier(format!("v_{}", self.entity))
        )
    }

    fn key(&self) -> String {
        format!("pk_{}", self.entity)
    }
}

pub(crate) fn bad_name(name: &str) -> ! {
    raise(
        Code::ERRCODE_INVALID_NAME,
        format!("invalid TVIEW name \"{name}\""),
        Some("The name must be [schema.]tv_<entity> (or just <entity>), with a lower-case identifier of at most 51 characters as <entity>."),
        Some("Example: SELECT pg_tviews_create('tv_post', 'SELECT pk_post, id, jsonb_build_object(...) AS data FROM tb_post');"),
    )
}

/// `[schema.]relation` as written: a part in double quotes is taken literally, any other part
/// as it is (TVIEW entities are lower case; nothing is folded, so `Post` is refused, not
/// silently renamed). `None` when it is not one or two such parts.
pub(crate) fn split_name(name: &str) -> Option<(Option<String>, String)> {
    let mut parts = Vec::new();
    let mut rest = name.trim();
    loop {
        let (part, tail) = if let Some(quoted) = rest.strip_prefix('"') {
            let mut end = None;
            let bytes = quoted.as_bytes();
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'"' {
                    if bytes.get(i + 1) == Some(&b'"') {
                        i += 2;
                        continue;
                    }
                    end = Some(i);
                    break;
                }
                i += 1;
            }
            let end = end?;
            (quoted[..end].replace("\"\"", "\""), &quoted[end + 1..])
        } else {
            let end = rest.find('.').unwrap_or(rest.len());
            let part = &rest[..end];
            let plain = part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
            if part.is_empty() || !plain {
                return None;
            }
            (part.to_string(), &rest[end..])
        };
        parts.push(part);
        match tail.strip_prefix('.') {
            Some(next) => rest = next,
            None if tail.is_empty() => break,
            None => return None,
        }
    }
    match parts.len() {
        1 => Some((None, parts.pop()?)),
        2 => {
            let relation = parts.pop()?;
            Some((parts.pop(), relation))
        }
        _ => None,
    }
}

/// Step 1: the schema (given, or the caller's current schema) and a valid entity name.
fn target(name: &str) -> Target {
    let Some((schema, relation)) = split_name(name) else {
        bad_name(name);
    };
    let entity = relation
        .strip_prefix("tv_")
        .unwrap_or(&relation)
        .to_string();
    if !valid_entity(&entity) {
        bad_name(name);
    }
    let schema = schema.unwrap_or_else(|| {
        Spi::get_one::<String>("SELECT pg_catalog.current_schema()::text")
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                raise(
                    Code::ERRCODE_INVALID_SCHEMA_NAME,
                    format!("no schema has been selected to create TVIEW \"tv_{entity}\" in"),
                    None,
                    Some("Name the schema (pg_tviews_create('app.tv_x', ...)) or set search_path."),
                )
            })
    });
    Target { schema, entity }
}

fn get_oid(sql: &str, args: &[pgrx::datum::DatumWithOid]) -> Option<pg_sys::Oid> {
    Spi::get_one_with_args::<pg_sys::Oid>(sql, args)
        .ok()
        .flatten()
}

/// Step 2: the entity is unused, and neither relation exists in the target schema.
fn check_free(target: &Target) {
    let entity = &target.entity;
    if get_oid(
        "SELECT table_oid FROM pg_tview_meta WHERE entity = $1",
        &[entity.as_str().into()],
    )
    .is_some()
    {
        raise(
            Code::ERRCODE_DUPLICATE_OBJECT,
            format!("TVIEW \"tv_{entity}\" already exists"),
            Some("TVIEW entities are unique in a database, whatever their schema."),
            Some("Drop it first with pg_tviews_drop(), or choose another name."),
        );
    }
    for relation in [target.table(), target.view()] {
        if get_oid(
            "SELECT pg_catalog.to_regclass($1)::oid",
            &[relation.as_str().into()],
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
}

/// Runs DDL whose SQL errors should reach the user unchanged (SPI raises those directly).
pub fn run_sql(sql: &str) {
    if let Err(e) = Spi::run(sql) {
        raise(
            Code::ERRCODE_INTERNAL_ERROR,
            format!("SPI failure: {e}"),
            None,
            None,
        );
    }
}

/// Step 3: the backing view, with the caller's search_path. PostgreSQL itself refuses a view
/// over a temporary table in a permanent schema; that refusal is reported in our terms.
fn create_view(target: &Target, query: &str) -> pg_sys::Oid {
    let sql = format!("CREATE VIEW {} AS {query}", target.view());
    PgTryBuilder::new(|| run_sql(&sql))
        .catch_when(Code::ERRCODE_INVALID_TABLE_DEFINITION, |e| {
            let temporary = match &e {
                pgrx::pg_sys::panic::CaughtError::PostgresError(report)
                | pgrx::pg_sys::panic::CaughtError::ErrorReport(report) => {
                    report.message().contains("temporary")
                }
                _ => false,
            };
            if temporary {
                raise(
                    Code::ERRCODE_FEATURE_NOT_SUPPORTED,
                    format!(
                        "TVIEW \"tv_{}\" cannot be kept up to date: its query reads a temporary table",
                        target.entity
                    ),
                    Some("Background workers cannot read another session's temporary tables, and the TVIEW would outlive it."),
                    Some("Use a permanent (or UNLOGGED) table."),
                );
            }
            e.rethrow()
        })
        .execute();
    get_oid(
        "SELECT pg_catalog.to_regclass($1)::oid",
        &[target.view().as_str().into()],
    )
    .expect("backing view was just created")
}

/// Step 4: an integer key column `pk_<entity>` and a jsonb `data` column.
fn check_columns(view_oid: pg_sys::Oid, target: &Target) {
    let key = target.key();
    let entity = &target.entity;
    let type_of = |column: &str| {
        get_oid(
            "SELECT atttypid FROM pg_attribute WHERE attrelid = $1 AND attname = $2 AND NOT attisdropped",
            &[view_oid.into(), column.into()],
        )
    };
    match type_of(&key) {
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
            Some(&format!("Add {key} to the select list, e.g. SELECT tb_{entity}.{key}, ... FROM tb_{entity}, or alias the root's key: SELECT pk_x AS {key}.")),
        ),
    }
    match type_of("data") {
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
}

/// A table the definition reads and the triggers capture.
#[derive(Clone, Debug)]
pub struct SourceTable {
    pub oid: pg_sys::Oid,
    pub name: String,
    /// Always schema-qualified and quoted.
    pub qualified: String,
    /// How many times the definition reads it.
    pub reads: u32,
    /// Some read of it is a subquery that refers to nothing of its row (`Analysis::uncorrelated`).
    pub uncorrelated: bool,
}

/// A read that no trigger can capture, accepted because the creator opted in to a periodic
/// reconcile (`reconcile_interval`).
pub struct Uncaptured {
    /// The relation, or InvalidOid for an expression (a volatile function).
    pub oid: pg_sys::Oid,
    pub what: String,
}

/// Refuses a read that cannot be captured, or (with `opt_in`) records it as uncaptured.
struct Refusals<'a> {
    table: &'a str,
    opt_in: bool,
    uncaptured: Vec<Uncaptured>,
}

impl Refusals<'_> {
    fn refuse(&mut self, oid: pg_sys::Oid, what: String, detail: &str, hint: &str) {
        if self.opt_in {
            self.uncaptured.push(Uncaptured { oid, what });
            return;
        }
        raise(
            Code::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!(
                "TVIEW \"{}\" cannot be kept up to date: its query reads {what}",
                self.table
            ),
            Some(detail),
            Some(&format!(
                "{hint} Or accept periodic recomputation: pg_tviews_create('{}', $$...$$, reconcile_interval => '5 minutes').",
                self.table
            )),
        )
    }

    /// Never accepted, not even with a reconcile interval.
    fn forbid(&self, what: String, detail: &str, hint: &str) -> ! {
        raise(
            Code::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!(
                "TVIEW \"{}\" cannot be kept up to date: its query reads {what}",
                self.table
            ),
            Some(detail),
            Some(hint),
        )
    }
}

/// Step 5: every read of the definition is captured, or the TVIEW is refused (never silently
/// stale), or, with `opt_in` (a reconcile interval), listed as uncaptured. Returns the tables
/// to capture and the uncaptured reads.
fn classify(
    analysis: &analyze::Analysis,
    table: &str,
    opt_in: bool,
) -> (Vec<SourceTable>, Vec<Uncaptured>) {
    let mut refusals = Refusals {
        table,
        opt_in,
        uncaptured: Vec::new(),
    };
    let mut sources = Vec::new();
    for read in &analysis.reads {
        let oid = pg_sys::Oid::from(read.oid);
        let qualified = triggers::qualified_name(oid).unwrap_or_else(|| read.oid.to_string());
        let name = qualified
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .trim_matches('"')
            .to_string();
        let relkind = read.relkind;
        if relkind == pg_sys::RELKIND_VIEW {
            // Walked: what it reads is in `reads` too.
            continue;
        }
        if read.oid < pg_sys::FirstNormalObjectId {
            refusals.refuse(
                oid,
                format!("the system catalog {qualified}"),
                "Catalog changes fire no triggers, so they cannot be captured.",
                "Read the information from your own tables instead.",
            );
        }
        if read.persistence == pg_sys::RELPERSISTENCE_TEMP {
            refusals.forbid(
                format!("the temporary table {qualified}"),
                "Background workers cannot read another session's temporary tables, and the TVIEW would outlive it.",
                "Use a permanent (or UNLOGGED) table.",
            );
        }
        match relkind {
            k if k == pg_sys::RELKIND_RELATION
                || k == pg_sys::RELKIND_PARTITIONED_TABLE =>
            {
                sources.push(SourceTable {
                    oid,
                    name,
                    qualified,
                    reads: read.count,
                    uncorrelated: analysis.uncorrelated.contains(&read.oid),
                })
            }
            k if k == pg_sys::RELKIND_MATVIEW => refusals.refuse(
                oid,
                format!("the materialized view {qualified}"),
                "REFRESH MATERIALIZED VIEW fires no trigger, so its changes cannot be captured.",
                "Read the tables the materialized view reads (or make it a TVIEW, which can be read by other TVIEWs).",
            ),
            k if k == pg_sys::RELKIND_FOREIGN_TABLE => refusals.refuse(
                oid,
                format!("the foreign table {qualified}"),
                "Changes made on the remote server are never seen locally.",
                "Copy the remote data into a local table (e.g. with logical replication, whose applied rows are captured).",
            ),
            _ => refusals.refuse(
                oid,
                format!("{qualified}, which is neither a table nor a view"),
                "Only tables (plain or partitioned) and views over them can be captured.",
                "Read tables instead.",
            ),
        }
    }
    if analysis.volatile {
        let names = function_names(&analysis.functions, "provolatile = 'v'");
        refusals.refuse(
            pg_sys::InvalidOid,
            if names.is_empty() {
                "a volatile expression".to_string()
            } else {
                format!("the volatile function {names}")
            },
            "A volatile result differs at every refresh, so the TVIEW could never match its query.",
            "Compute such values in the application or store them in a source table.",
        );
    }
    let opaque = function_names(
        &analysis.functions,
        &format!(
            "oid >= {} AND provolatile <> 'i'",
            pg_sys::FirstNormalObjectId
        ),
    );
    if !opaque.is_empty() {
        refusals.refuse(
            pg_sys::InvalidOid,
            format!("through the function {opaque}"),
            "A non-immutable user-defined function may read tables that the TVIEW's analysis cannot see, whose changes would then never reach it.",
            "Inline the function's query into the definition, or declare it IMMUTABLE if it reads no table.",
        );
    }
    (sources, refusals.uncaptured)
}

/// `f(int), g(text)` of the functions among `oids` that match `condition` on `pg_proc`.
fn function_names(oids: &[u32], condition: &str) -> String {
    let oids: Vec<pg_sys::Oid> = oids.iter().map(|&o| pg_sys::Oid::from(o)).collect();
    Spi::get_one_with_args::<String>(
        &format!(
            "SELECT string_agg(oid::regprocedure::text, ', ' ORDER BY oid) FROM pg_catalog.pg_proc \
             WHERE oid = ANY($1) AND {condition}"
        ),
        &[oids.into()],
    )
    .ok()
    .flatten()
    .unwrap_or_default()
}

/// Step 6: the root table (its key column's values are the TVIEW keys) and that column: where
/// the key is selected from (`pk_post AS pk_post_card` makes `tb_post` the root of a second read
/// model of posts), else `tb_<entity>`, else the only source with a column `pk_<entity>`.
fn find_root(
    analysis: &analyze::Analysis,
    sources: &[SourceTable],
    target: &Target,
) -> (SourceTable, String) {
    let key = target.key();
    if let Some((relid, attno)) = analysis.key_origin {
        if let Some(source) = sources.iter().find(|s| s.oid.to_u32() == relid) {
            let column = Spi::get_one_with_args::<String>(
                "SELECT attname::text FROM pg_attribute WHERE attrelid = $1 AND attnum = $2",
                &[source.oid.into(), attno.into()],
            )
            .ok()
            .flatten();
            if let Some(column) = column {
                return (source.clone(), column);
            }
        }
    }
    let has_key = |s: &SourceTable| {
        Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = $1 AND attname = $2 AND NOT attisdropped)",
            &[s.oid.into(), key.as_str().into()],
        )
        .ok()
        .flatten()
        .unwrap_or(false)
    };
    let keyed: Vec<&SourceTable> = sources.iter().filter(|s| has_key(s)).collect();
    let root = keyed
        .iter()
        .find(|s| s.name == format!("tb_{}", target.entity))
        .or_else(|| (keyed.len() == 1).then(|| &keyed[0]));
    match root {
        Some(root) => ((*root).clone(), key),
        None => raise(
            Code::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("cannot find the root table of TVIEW \"tv_{}\"", target.entity),
            Some(&format!(
                "\"{key}\" is not a plain column of one table read by the query, and no such table has a column named \"{key}\"."
            )),
            Some(&format!(
                "Select {key} straight from the root table's key, e.g. SELECT p.pk_post AS {key}, ... FROM tb_post p."
            )),
        ),
    }
}

/// Step 7: the table, filled from the view, with its primary key.
fn materialize(target: &Target) -> pg_sys::Oid {
    let key = target.key();
    let materialize = format!(
        "CREATE TABLE {t} AS SELECT * FROM {v}; ALTER TABLE {t} ADD PRIMARY KEY ({k})",
        t = target.table(),
        v = target.view(),
        k = quote_identifier(&key)
    );
    let entity = &target.entity;
    let bad_key = |problem: &str| -> ! {
        raise(
            Code::ERRCODE_INVALID_TABLE_DEFINITION,
            format!("the TVIEW query returns {problem} values of \"{key}\""),
            Some("A TVIEW has exactly one row per key."),
            Some(&format!(
                "Make {key} unique and not null in the query's result, e.g. select it from tb_{entity}'s primary key (a join that repeats rows needs an aggregate)."
            )),
        )
    };
    PgTryBuilder::new(|| run_sql(&materialize))
        .catch_when(Code::ERRCODE_UNIQUE_VIOLATION, |_| bad_key("duplicate"))
        .catch_when(Code::ERRCODE_NOT_NULL_VIOLATION, |_| bad_key("NULL"))
        .execute();
    get_oid(
        "SELECT pg_catalog.to_regclass($1)::oid",
        &[target.table().as_str().into()],
    )
    .expect("TVIEW table was just created")
}

/// Step 8: lineage rows and capture triggers for every source; returns the sources that only
/// have a whole-TVIEW refresh.
fn install_lineage(
    table_oid: pg_sys::Oid,
    sources: &[SourceTable],
    root: &SourceTable,
    root_key: &str,
    recursive: bool,
) -> Vec<String> {
    let tables: Vec<lineage::Table> = sources
        .iter()
        .map(|s| lineage::Table {
            oid: s.oid.to_u32(),
            qualified: s.qualified.clone(),
        })
        .collect();
    let edges = reference_edges(sources);
    let root_table = lineage::Table {
        oid: root.oid.to_u32(),
        qualified: root.qualified.clone(),
    };
    let root_reads = lineage::RootReads {
        count: root.reads,
        recursive,
    };
    let mut next_rule = kind::FIRST_RULE;
    let mut full_sources = Vec::new();
    for (source, read) in tables.iter().zip(sources) {
        let plan = if read.uncorrelated {
            // The schema's references would key it, but the query does not join it to the
            // TVIEW's row: every row depends on every change.
            lineage::Plan::Full {
                reason: "read by a subquery that does not refer to the TVIEW's row".into(),
            }
        } else {
            lineage::plan(&root_table, root_key, source, &tables, &edges, root_reads)
        };
        let captures = match plan {
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
        triggers::Capture {
            tview_oid: table_oid.to_u32(),
            sync: false,
            source_oid: pg_sys::Oid::from(source.oid),
            columns: &columns,
        }
        .install();
        let _owner = crate::catalog::as_extension_owner();
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
            .unwrap_or_else(|e| Error::from(e).raise("could not record lineage"));
        }
    }
    full_sources
}

/// Single-column integer references among the source tables: declared foreign keys plus the
/// naming convention `fk_<x>` or `fk_<role>_<x>` -> `pk_<x>` (which also links TVIEWs such as
/// `tv_user`, and a table to itself: `fk_parent_category` -> `pk_category`).
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
             JOIN pg_attribute b ON b.attname LIKE 'pk\\_%' \
                  AND (substr(a.attname, 4) = substr(b.attname, 4) \
                       OR right(a.attname, length(b.attname) - 2) = '_' || substr(b.attname, 4)) \
             WHERE a.attrelid = ANY($1) AND b.attrelid = ANY($1) \
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
fn create_tview_indexes(target: &Target, table_oid: pg_sys::Oid) {
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
            target.table(),
            quote_identifier(&column)
        ));
    }
}

/// Step 9: the `pg_tview_meta` row.
#[allow(clippy::too_many_arguments)]
fn record_metadata(
    target: &Target,
    table_oid: pg_sys::Oid,
    view_oid: pg_sys::Oid,
    query: &str,
    sources: &[SourceTable],
    root: &SourceTable,
    root_key: &str,
) {
    let dependencies: Vec<pg_sys::Oid> = sources.iter().map(|s| s.oid).collect();
    let fk_columns = Spi::get_one_with_args::<Vec<String>>(
        "SELECT coalesce(array_agg(attname::text ORDER BY attnum), '{}') FROM pg_attribute \
         WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped AND attname LIKE 'fk\\_%'",
        &[view_oid.into()],
    )
    .ok()
    .flatten()
    .unwrap_or_default();
    // Through jsonb_populate_record: a schema not yet updated to this version lacks the newer
    // columns, and the library serves it until ALTER EXTENSION ... UPDATE.
    let row = serde_json::json!({
        "entity": target.entity,
        "table_oid": table_oid.to_u32(),
        "view_oid": view_oid.to_u32(),
        "definition": query,
        "dependencies": dependencies.iter().map(|o| o.to_u32()).collect::<Vec<_>>(),
        "fk_columns": fk_columns,
        "key_column": target.key(),
        "root_table": root.oid.to_u32(),
        "root_key": root_key,
        "mode": "async",
        "paused": false,
    });
    let _owner = crate::catalog::as_extension_owner();
    Spi::run_with_args(
        "INSERT INTO pg_tview_meta SELECT (jsonb_populate_record(NULL::pg_tview_meta, \
             $1::jsonb || jsonb_build_object('created_at', now()))).*",
        &[pgrx::JsonB(row).into()],
    )
    .unwrap_or_else(|e| {
        raise(
            Code::ERRCODE_INTERNAL_ERROR,
            format!("could not record TVIEW metadata: {e}"),
            None,
            None,
        )
    });
}

/// Step 10 (opt-in only): the reconcile interval, and one lineage row (rule -1) per read that no
/// trigger captures, so `pg_tviews_explain` shows them; warns, naming them.
fn record_uncaptured(
    table: &str,
    table_oid: pg_sys::Oid,
    interval: pgrx::datum::Interval,
    uncaptured: &[Uncaptured],
) {
    let _owner = crate::catalog::as_extension_owner();
    Spi::run_with_args(
        "UPDATE pg_tview_meta SET reconcile_interval = $2, last_reconciled_at = now() WHERE table_oid = $1",
        &[table_oid.into(), interval.into()],
    )
    .unwrap_or_else(|e| Error::from(e).raise("could not record the reconcile interval"));
    let mut by_source: std::collections::BTreeMap<u32, Vec<&str>> = Default::default();
    for u in uncaptured {
        by_source.entry(u.oid.to_u32()).or_default().push(&u.what);
    }
    for (oid, whats) in &by_source {
        Spi::run_with_args(
            "INSERT INTO pg_tview_lineage (tview_oid, source_oid, rule, capture_column, resolve_sql, description) \
             VALUES ($1, $2::oid, -1, '', NULL, $3)",
            &[
                table_oid.into(),
                // An expression's row has source_oid 0, which an Oid argument would turn into
                // NULL.
                i64::from(*oid).into(),
                format!("not captured, reconciled every {interval}: {}", whats.join("; ")).into(),
            ],
        )
        .unwrap_or_else(|e| Error::from(e).raise("could not record lineage"));
    }
    if !uncaptured.is_empty() {
        let whats: Vec<&str> = uncaptured.iter().map(|u| u.what.as_str()).collect();
        crate::errors::warn(
            Code::ERRCODE_WARNING,
            format!(
                "TVIEW \"{table}\" reads {}, whose changes are not captured: it can be stale for up to {interval}",
                whats.join(", ")
            ),
            "The worker recomputes the whole TVIEW every reconcile_interval; pg_tviews_explain() lists what is not captured.",
        );
    }
}

/// What the analysis of a backing view decided (steps 4 to 6), before anything is written.
struct Plan {
    sources: Vec<SourceTable>,
    uncaptured: Vec<Uncaptured>,
    root: SourceTable,
    root_key: String,
    recursive: bool,
}

/// Steps 4 to 6 on the backing view `view_oid`: columns, what is read and captured, the root.
/// Raises (and so writes nothing) when the TVIEW cannot be maintained.
fn plan(target: &Target, view_oid: pg_sys::Oid, opt_in: bool) -> Plan {
    let table = format!("tv_{}", target.entity);
    check_columns(view_oid, target);
    let analysis = analyze::analyze(view_oid, &target.key());
    let (sources, uncaptured) = classify(&analysis, &table, opt_in);
    let (root, root_key) = find_root(&analysis, &sources, target);
    Plan {
        sources,
        uncaptured,
        root,
        root_key,
        recursive: analysis.recursive,
    }
}

/// Steps 8 to 10 for the table `table_oid`: lineage, capture triggers, metadata, and a check
/// that both refresh statements plan.
fn record(
    target: &Target,
    table_oid: pg_sys::Oid,
    view_oid: pg_sys::Oid,
    query: &str,
    plan: &Plan,
    reconcile_interval: Option<pgrx::datum::Interval>,
) {
    let table = format!("tv_{}", target.entity);
    let full_sources = install_lineage(
        table_oid,
        &plan.sources,
        &plan.root,
        &plan.root_key,
        plan.recursive,
    );
    if !full_sources.is_empty() {
        crate::errors::warn(
            Code::ERRCODE_WARNING,
            format!(
                "changes to {} will fully refresh TVIEW \"{table}\"",
                full_sources.join(", ")
            ),
            "Declare a single-column foreign key (or use fk_<x> -> pk_<x> integer columns) between that table and the TVIEW's root table, and join it to the row (a subquery that reads it refers to the row, e.g. WHERE p.fk_user = u.pk_user).",
        );
    }
    record_metadata(
        target,
        table_oid,
        view_oid,
        query,
        &plan.sources,
        &plan.root,
        &plan.root_key,
    );
    if let Some(interval) = reconcile_interval {
        record_uncaptured(&table, table_oid, interval, &plan.uncaptured);
    }
    if let Err(e) = refresh::validate(table_oid) {
        raise(
            Code::ERRCODE_INVALID_TABLE_DEFINITION,
            format!("TVIEW \"{table}\" could not be refreshed incrementally: {e}"),
            None,
            Some("Every column type must support equality (use jsonb rather than json)."),
        );
    }
}

/// Creates `tv_<entity>` materialized from `query`, with its backing view `v_<entity>`, the
/// capture triggers on every source table, and its `pg_tview_meta` row. Returns the table's
/// name. With `reconcile_interval`, reads that cannot be captured are accepted (with a
/// WARNING) and the whole TVIEW is recomputed that often.
pub fn create(
    name: &str,
    query: &str,
    reconcile_interval: Option<pgrx::datum::Interval>,
) -> String {
    let target = target(name);
    {
        let _path = PinnedSearchPath::enter();
        check_free(&target);
    }
    let query = query.trim().trim_end_matches(';');
    let view_oid = create_view(&target, query);
    let _path = PinnedSearchPath::enter();
    let table = format!("tv_{}", target.entity);
    let plan = plan(&target, view_oid, reconcile_interval.is_some());
    let table_oid = materialize(&target);
    create_tview_indexes(&target, table_oid);
    record(
        &target,
        table_oid,
        view_oid,
        query,
        &plan,
        reconcile_interval,
    );
    let dboid = crate::pg::database_id();
    if queue::is_attached() && !queue::can_be_served(dboid) {
        crate::errors::warn(
            Code::ERRCODE_WARNING,
            format!("no pg_tviews_bgw worker can serve this database: TVIEW \"{table}\" will not be refreshed until a worker slot frees up"),
            "Every pg_tviews_bgw.max_workers slot is taken by other databases: raise pg_tviews_bgw.max_workers (and max_worker_processes) and restart.",
        );
    }
    if !super::tview::attach_current_database() && !queue::is_attached() {
        crate::errors::warn(
            Code::ERRCODE_WARNING,
            format!("TVIEW \"{table}\" will be refreshed synchronously, inside each writing statement"),
            "Add pg_tviews_bgw to shared_preload_libraries and restart PostgreSQL for background refresh.",
        );
    }
    table
}

/// Binds an existing TVIEW table and backing view again (`pg_tviews_repair`): derives lineage,
/// capture triggers and metadata from the view, as `create` would, without touching the
/// table's rows. The caller has removed what was there before.
pub fn rebind(
    schema: &str,
    entity: &str,
    table_oid: pg_sys::Oid,
    view_oid: pg_sys::Oid,
    query: &str,
    reconcile_interval: Option<pgrx::datum::Interval>,
) {
    let target = Target {
        schema: schema.to_string(),
        entity: entity.to_string(),
    };
    let _path = PinnedSearchPath::enter();
    let plan = plan(&target, view_oid, reconcile_interval.is_some());
    record(
        &target,
        table_oid,
        view_oid,
        query,
        &plan,
        reconcile_interval,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_accepts_every_spelling() {
        assert_eq!(entity_of("tv_post"), "post");
        assert_eq!(entity_of("post"), "post");
        assert_eq!(entity_of("app.tv_post"), "post");
        assert!(valid_entity("post_2"));
        assert!(!valid_entity("Post"));
        assert!(!valid_entity("2post"));
        assert!(!valid_entity("po-st"));
        assert!(!valid_entity(""));
        assert!(!valid_entity(&"a".repeat(52)));
    }

    #[test]
    fn names_split_into_schema_and_relation_without_folding() {
        assert_eq!(split_name("tv_post"), Some((None, "tv_post".into())));
        assert_eq!(
            split_name("app.tv_post"),
            Some((Some("app".into()), "tv_post".into()))
        );
        assert_eq!(
            split_name("\"My App\".tv_post"),
            Some((Some("My App".into()), "tv_post".into()))
        );
        assert_eq!(split_name("Bad-Name"), None);
        assert_eq!(split_name("a.b.c"), None);
        assert_eq!(split_name("app."), None);
        assert_eq!(split_name("Post"), Some((None, "Post".into())));
    }
}

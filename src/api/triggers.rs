//! The capture triggers of a TVIEW on its source tables: which ones exist for each kind of
//! source, installed, checked and removed together, and kept on every partition of a
//! partitioned source. Runs in user backends (create, drop, reinstall, the DDL event triggers).
//!
//! Which trigger catches which write (never assume a trigger fires):
//!
//! | source        | ordinary session (`origin`)                 | `session_replication_role = replica` (subscription apply, restores with triggers) |
//! |---------------|---------------------------------------------|------------------------------------------------------------------------------------|
//! | plain table   | `_ins` `_upd` `_del`: statement, transition tables | `_row`: row trigger, `ENABLE REPLICA` (fires only there)                    |
//! | partitioned   | `_row`: row trigger on the parent, `ENABLE ALWAYS`, cloned by PostgreSQL onto every partition, present, created or attached later | same trigger |
//! | no lineage    | `_full` (plain) or `_row` with an empty column: whole-TVIEW refresh | same, through `_row`                                          |
//! | TRUNCATE      | `_trunc`, statement, `ENABLE ALWAYS`, on the table and on every partition (statement triggers are not cloned) | same trigger |
//!
//! Statement triggers of a partitioned table fire only for statements aimed at the parent, so a
//! partitioned source uses the cloned row trigger for DML instead. Partitions created or
//! attached later get their `_trunc` trigger from the `ddl_command_end` event trigger
//! (`ddl::_pg_tviews_partitions_changed`).

use super::create::run_sql as run;
use crate::capture::binding::Binding;
use crate::errors::raise;
use pgrx::prelude::*;
use pgrx::spi::{quote_identifier, quote_literal};
use pgrx::PgSqlErrorCode as Code;

/// Suffixes of every trigger name a TVIEW may own (`tview_<entity>_<suffix>`).
const SUFFIXES: [&str; 6] = ["ins", "upd", "del", "trunc", "full", "row"];

/// Every trigger name a TVIEW may own on a source table.
pub fn trigger_names(entity: &str) -> Vec<String> {
    SUFFIXES
        .iter()
        .map(|suffix| format!("tview_{entity}_{suffix}"))
        .collect()
}

/// The trigger names a TVIEW has on a source table itself (its partitions add `_trunc`).
pub fn expected(entity: &str, partitioned: bool, full_only: bool) -> Vec<String> {
    let suffixes: &[&str] = match (partitioned, full_only) {
        (true, _) => &["row", "trunc"],
        (false, true) => &["full", "row"],
        (false, false) => &["ins", "upd", "del", "trunc", "row"],
    };
    suffixes
        .iter()
        .map(|s| format!("tview_{entity}_{s}"))
        .collect()
}

/// What the capture triggers of one TVIEW on one source table carry.
pub struct Capture<'a> {
    pub entity: &'a str,
    /// Quoted schema of the extension (where `pg_tviews_capture` lives).
    pub schema: &'a str,
    pub tview_oid: u32,
    pub sync: bool,
    pub source_oid: pg_sys::Oid,
    /// `(column, queue entry kind)`; a single empty column means "whole-TVIEW refresh".
    pub columns: &'a [(String, u32)],
}

/// `schema.name` of a relation, always qualified and quoted (stored SQL must not depend on any
/// search_path); `None` when it does not exist.
pub fn qualified_name(oid: pg_sys::Oid) -> Option<String> {
    Spi::get_one_with_args::<String>(
        "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
        &[oid.into()],
    )
    .ok()
    .flatten()
}

/// `(schema, relation)` of a relation, unquoted; `None` when it does not exist.
fn relation_name(oid: pg_sys::Oid) -> Option<(String, String)> {
    let parts = Spi::get_one_with_args::<Vec<String>>(
        "SELECT ARRAY[n.nspname::text, c.relname::text] FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
        &[oid.into()],
    )
    .ok()
    .flatten()?;
    match <[String; 2]>::try_from(parts) {
        Ok([schema, relation]) => Some((schema, relation)),
        Err(_) => None,
    }
}

fn is_partitioned(oid: pg_sys::Oid) -> bool {
    Spi::get_one_with_args::<bool>(
        "SELECT relkind = 'p' FROM pg_catalog.pg_class WHERE oid = $1",
        &[oid.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false)
}

/// Every partition below `oid` (all levels), qualified; empty for a plain table.
fn partitions(oid: pg_sys::Oid) -> Vec<String> {
    Spi::get_one_with_args::<Vec<String>>(
        "SELECT coalesce(array_agg(pg_catalog.format('%I.%I', n.nspname, c.relname) ORDER BY c.oid), '{}') \
         FROM pg_catalog.pg_partition_tree($1) t \
         JOIN pg_catalog.pg_class c ON c.oid = t.relid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE t.level > 0",
        &[oid.into()],
    )
    .ok()
    .flatten()
    .unwrap_or_default()
}

impl Capture<'_> {
    fn function(&self) -> String {
        let (schema, table) =
            relation_name(pg_sys::Oid::from(self.tview_oid)).unwrap_or_else(|| {
                raise(
                    Code::ERRCODE_UNDEFINED_TABLE,
                    format!("TVIEW table {} does not exist", self.tview_oid),
                    None,
                    None,
                )
            });
        let mut args = vec![quote_literal(Binding::encode(
            self.tview_oid,
            self.sync,
            &schema,
            &table,
        ))];
        for (column, rule) in self.columns {
            args.push(quote_literal(column));
            args.push(format!("'{rule}'"));
        }
        format!("{}.pg_tviews_capture({})", self.schema, args.join(", "))
    }

    fn name(&self, suffix: &str) -> String {
        quote_identifier(format!("tview_{}_{suffix}", self.entity))
    }

    fn full_only(&self) -> bool {
        self.columns.iter().all(|(c, _)| c.is_empty())
    }

    /// Creates the triggers on the source (and on each of its partitions).
    pub fn install(&self) {
        let Some(source) = qualified_name(self.source_oid) else {
            return;
        };
        let function = self.function();
        let row = self.name("row");
        let mut statements = Vec::new();
        if is_partitioned(self.source_oid) {
            statements.push(format!(
                "CREATE TRIGGER {row} AFTER INSERT OR UPDATE OR DELETE ON {source} \
                 FOR EACH ROW EXECUTE FUNCTION {function}"
            ));
            statements.push(format!("ALTER TABLE {source} ENABLE ALWAYS TRIGGER {row}"));
        } else {
            if self.full_only() {
                let full = self.name("full");
                statements.push(format!(
                    "CREATE TRIGGER {full} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {source} \
                     FOR EACH STATEMENT EXECUTE FUNCTION {function}"
                ));
                statements.push(format!("ALTER TABLE {source} ENABLE ALWAYS TRIGGER {full}"));
            } else {
                let (ins, upd, del) = (self.name("ins"), self.name("upd"), self.name("del"));
                statements.push(format!(
                    "CREATE TRIGGER {ins} AFTER INSERT ON {source} REFERENCING NEW TABLE AS tview_new \
                     FOR EACH STATEMENT EXECUTE FUNCTION {function}"
                ));
                statements.push(format!(
                    "CREATE TRIGGER {upd} AFTER UPDATE ON {source} REFERENCING OLD TABLE AS tview_old NEW TABLE AS tview_new \
                     FOR EACH STATEMENT EXECUTE FUNCTION {function}"
                ));
                statements.push(format!(
                    "CREATE TRIGGER {del} AFTER DELETE ON {source} REFERENCING OLD TABLE AS tview_old \
                     FOR EACH STATEMENT EXECUTE FUNCTION {function}"
                ));
            }
            statements.push(format!(
                "CREATE TRIGGER {row} AFTER INSERT OR UPDATE OR DELETE ON {source} \
                 FOR EACH ROW EXECUTE FUNCTION {function}"
            ));
            statements.push(format!("ALTER TABLE {source} ENABLE REPLICA TRIGGER {row}"));
        }
        for statement in statements {
            run(&statement);
        }
        if !self.full_only() || is_partitioned(self.source_oid) {
            self.install_truncate(&source);
        }
        self.cover_partitions();
    }

    fn install_truncate(&self, relation: &str) {
        let trunc = self.name("trunc");
        run(&format!(
            "CREATE TRIGGER {trunc} AFTER TRUNCATE ON {relation} \
             FOR EACH STATEMENT EXECUTE FUNCTION {}",
            self.function()
        ));
        run(&format!(
            "ALTER TABLE {relation} ENABLE ALWAYS TRIGGER {trunc}"
        ));
    }

    /// Gives every partition of the source that lacks one its `_trunc` trigger (statement
    /// triggers are not cloned onto partitions); idempotent.
    pub fn cover_partitions(&self) {
        let trunc = format!("tview_{}_trunc", self.entity);
        for partition in partitions(self.source_oid) {
            let exists = Spi::get_one_with_args::<bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger WHERE tgrelid = $1::regclass AND tgname = $2)",
                &[partition.as_str().into(), trunc.as_str().into()],
            );
            if !matches!(exists, Ok(Some(true))) {
                self.install_truncate(&partition);
            }
        }
    }
}

/// Drops every trigger of `entity`, wherever it is (also on a table detached from a partitioned
/// source since); clones of a partitioned parent's row trigger go with it.
pub fn drop_all(entity: &str) {
    let names = trigger_names(entity);
    let rows = Spi::connect(|client| {
        let rows = client.select(
            "SELECT t.tgname::text, pg_catalog.format('%I.%I', n.nspname, c.relname) \
             FROM pg_catalog.pg_trigger t \
             JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE t.tgname = ANY ($1) AND t.tgparentid = 0 \
             ORDER BY c.oid DESC, 1",
            None,
            &[names.into()],
        )?;
        let mut out = Vec::new();
        for row in rows {
            out.push((
                row.get::<String>(1)?.unwrap_or_default(),
                row.get::<String>(2)?.unwrap_or_default(),
            ));
        }
        Ok::<_, spi::Error>(out)
    })
    .unwrap_or_else(|e| {
        raise(
            Code::ERRCODE_INTERNAL_ERROR,
            format!("could not list capture triggers: {e}"),
            None,
            None,
        )
    });
    for (trigger, relation) in rows {
        run(&format!(
            "DROP TRIGGER IF EXISTS {} ON {relation}",
            quote_identifier(&trigger)
        ));
    }
}

/// What is wrong with the capture of each TVIEW (or of one): `(entity, problem)` for every
/// capture trigger that should exist and does not, is disabled (`ALTER TABLE ... DISABLE
/// TRIGGER`: as stale as a missing one) or feeds another relation (restored from a dump made
/// before triggers carried names, or copied by hand), and for a TVIEW without lineage. Read
/// from the catalogs, independently of what the triggers themselves do.
pub fn capture_problems(only: Option<pg_sys::Oid>) -> Vec<(String, String)> {
    let read = Spi::connect(|client| {
        let mut tviews = Vec::new();
        for row in client.select(
            "SELECT m.entity, m.table_oid::oid, \
                    EXISTS (SELECT 1 FROM pg_tview_lineage l WHERE l.tview_oid = m.table_oid) \
             FROM pg_tview_meta m WHERE ($1::oid IS NULL OR m.table_oid = $1) \
               AND EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = m.table_oid) \
             ORDER BY 1",
            None,
            &[only.into()],
        )? {
            tviews.push((
                row.get::<String>(1)?.unwrap_or_default(),
                row.get::<pg_sys::Oid>(2)?.unwrap_or(pg_sys::InvalidOid),
                row.get::<bool>(3)?.unwrap_or(false),
            ));
        }
        let mut sources = Vec::new();
        for row in client.select(
            "SELECT m.entity, l.source_oid::oid, bool_and(l.capture_column = ''), \
                    (SELECT relkind = 'p' FROM pg_catalog.pg_class WHERE oid = l.source_oid) \
             FROM pg_tview_meta m JOIN pg_tview_lineage l ON l.tview_oid = m.table_oid \
             WHERE ($1::oid IS NULL OR m.table_oid = $1) \
               AND EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE oid = l.source_oid) AND l.rule >= 0 \
             GROUP BY m.entity, l.source_oid ORDER BY 1, 2",
            None,
            &[only.into()],
        )? {
            sources.push((
                row.get::<String>(1)?.unwrap_or_default(),
                row.get::<pg_sys::Oid>(2)?.unwrap_or(pg_sys::InvalidOid),
                row.get::<bool>(3)?.unwrap_or(false),
                row.get::<bool>(4)?.unwrap_or(false),
            ));
        }
        Ok::<_, spi::Error>((tviews, sources))
    });
    let (tviews, sources) = read.unwrap_or_else(|e| {
        raise(
            Code::ERRCODE_INTERNAL_ERROR,
            format!("could not read lineage: {e}"),
            None,
            None,
        )
    });
    let mut problems = Vec::new();
    for (entity, _, has_lineage) in &tviews {
        if !has_lineage {
            problems.push((entity.clone(), "no lineage rows".to_string()));
        }
    }
    for (entity, source, full_only, partitioned) in sources {
        let names = expected(&entity, partitioned, full_only);
        let trunc = format!("tview_{entity}_trunc");
        let absent = Spi::get_one_with_args::<String>(
            "SELECT string_agg(DISTINCT format('%s on %s', r.n, r.relid::regclass), ', ') \
             FROM (SELECT $1::oid AS relid, n FROM unnest($2::text[]) n \
                   UNION ALL SELECT p.relid, $3 FROM pg_catalog.pg_partition_tree($1) p WHERE p.level > 0) r \
             WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgrelid = r.relid AND t.tgname = r.n \
                               AND t.tgenabled <> 'D')",
            &[source.into(), names.into(), trunc.as_str().into()],
        )
        .unwrap_or_else(|e| {
            raise(
                Code::ERRCODE_INTERNAL_ERROR,
                format!("could not read capture triggers: {e}"),
                None,
                None,
            )
        });
        if let Some(absent) = absent {
            problems.push((entity.clone(), format!("missing or disabled: {absent}")));
        }
    }
    // Triggers that exist but feed something else: their first argument, resolved as the
    // trigger function resolves it.
    for (entity, table_oid, _) in &tviews {
        let triggers = Spi::connect(|client| {
            let mut out = Vec::new();
            for row in client.select(
                "SELECT format('%s on %s', t.tgname, t.tgrelid::regclass), t.tgargs FROM pg_catalog.pg_trigger t \
                 WHERE t.tgname = ANY ($1) AND t.tgparentid = 0 ORDER BY 1",
                None,
                &[trigger_names(entity).into()],
            )? {
                out.push((
                    row.get::<String>(1)?.unwrap_or_default(),
                    row.get::<Vec<u8>>(2)?.unwrap_or_default(),
                ));
            }
            Ok::<_, spi::Error>(out)
        })
        .unwrap_or_else(|e| {
            raise(
                Code::ERRCODE_INTERNAL_ERROR,
                format!("could not read capture triggers: {e}"),
                None,
                None,
            )
        });
        let elsewhere: Vec<String> = triggers
            .into_iter()
            .filter(|(_, args)| {
                let first = args.split(|&b| b == 0).next().unwrap_or_default();
                let bound = std::str::from_utf8(first)
                    .ok()
                    .and_then(Binding::parse)
                    .map(|b| b.resolve());
                bound != Some(table_oid.to_u32())
            })
            .map(|(trigger, _)| trigger)
            .collect();
        if !elsewhere.is_empty() {
            problems.push((
                entity.clone(),
                format!("feeding another relation: {}", elsewhere.join(", ")),
            ));
        }
    }
    problems.sort();
    problems
}

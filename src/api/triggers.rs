//! The capture triggers on TVIEW source tables: one family per source table, however many
//! TVIEWs read it (each TVIEW is a group of the triggers' arguments, `capture::binding`),
//! rewritten whenever a TVIEW over the table is created, dropped, changes mode or is repaired;
//! kept on every partition of a partitioned source; checked against `pg_tview_lineage`. Runs
//! in user backends (create, drop, reinstall, repair, the DDL event triggers).
//!
//! Which trigger catches which write (never assume a trigger fires):
//!
//! | source        | ordinary session (`origin`)                 | `session_replication_role = replica` (subscription apply, restores with triggers) |
//! |---------------|---------------------------------------------|------------------------------------------------------------------------------------|
//! | plain table   | `tview_ins` `tview_upd` `tview_del`: statement, transition tables | `tview_row`: row trigger, `ENABLE REPLICA` (fires only there)        |
//! | partitioned   | `tview_prow`: row trigger on the parent, `ENABLE ALWAYS`, cloned by PostgreSQL onto every partition, present, created or attached later | same trigger |
//! | no lineage    | `tview_full` (plain; every TVIEW reading the table without lineage) or a group with an empty column: whole-TVIEW refresh | same, through `tview_row` |
//! | TRUNCATE      | `tview_trunc` (plain) or `tview_ptrunc` (partitioned: on the table and on every partition; statement triggers are not cloned), statement, `ENABLE ALWAYS` | same trigger |
//!
//! Statement triggers of a partitioned table fire only for statements aimed at the parent, so a
//! partitioned source uses the cloned row trigger for DML instead. Partitions created or
//! attached later get their `tview_ptrunc` trigger from the `ddl_command_end` event trigger
//! (`ddl::_pg_tviews_partitions_changed`). A partitioned source's triggers have names of their
//! own so that a partition that is also a plain source of some TVIEW can carry both families.
//!
//! 0.5.0 and earlier gave each TVIEW its own triggers, `tview_<entity>_<suffix>`, calling
//! `pg_tviews_capture`: those keep working (a dump of that era restores them), count as the
//! TVIEW's capture in the checks, and are folded into the family the next time the table's
//! triggers are rewritten.

use super::create::run_sql as run;
use crate::capture::binding::{Binding, Group};
use crate::errors::raise;
use pgrx::prelude::*;
use pgrx::spi::{quote_identifier, quote_literal};
use pgrx::PgSqlErrorCode as Code;

/// The trigger names of the family of a plain source table.
const PLAIN: [&str; 5] = [
    "tview_ins",
    "tview_upd",
    "tview_del",
    "tview_trunc",
    "tview_row",
];
/// ... of a plain source that no TVIEW has lineage for (every change is a full refresh).
const PLAIN_FULL: [&str; 2] = ["tview_full", "tview_row"];
/// ... of a partitioned source (`tview_ptrunc` also on each partition).
const PARTITIONED: [&str; 2] = ["tview_prow", "tview_ptrunc"];
/// The TRUNCATE trigger every partition of a partitioned source carries.
const PARTITION_TRUNC: &str = "tview_ptrunc";

/// Every trigger name of the families (each has its own shape: none is `tview_<entity>_<suffix>`).
pub fn family_name(name: &str) -> bool {
    PLAIN.contains(&name) || PLAIN_FULL.contains(&name) || PARTITIONED.contains(&name)
}

/// Suffixes of the per-TVIEW trigger names of 0.5.0 and earlier (`tview_<entity>_<suffix>`).
const LEGACY_SUFFIXES: [&str; 6] = ["ins", "upd", "del", "trunc", "full", "row"];

/// The entity of a per-TVIEW trigger name, when `name` is one.
fn legacy_entity(name: &str) -> Option<String> {
    let rest = name.strip_prefix("tview_")?;
    let (entity, suffix) = rest.rsplit_once('_')?;
    (LEGACY_SUFFIXES.contains(&suffix) && super::create::valid_entity(entity))
        .then(|| entity.to_string())
}

/// The entity a group's TVIEW table is named for (`tv_<entity>`), when it carries a name.
fn group_entity(group: &Group) -> Option<&str> {
    let (_, table) = group.binding.name.as_ref()?;
    Some(table.strip_prefix("tv_").unwrap_or(table))
}

/// What the capture of one TVIEW on one source table carries (creation, reinstall).
pub struct Capture<'a> {
    pub tview_oid: u32,
    pub sync: bool,
    pub source_oid: pg_sys::Oid,
    /// `(column, queue entry kind)`; a single empty column means "whole-TVIEW refresh".
    pub columns: &'a [(String, u32)],
}

impl Capture<'_> {
    /// The group of the triggers' arguments that feeds this TVIEW.
    pub fn group(&self) -> Group {
        let (schema, table) =
            relation_name(pg_sys::Oid::from(self.tview_oid)).unwrap_or_else(|| {
                raise(
                    Code::ERRCODE_UNDEFINED_TABLE,
                    format!("TVIEW table {} does not exist", self.tview_oid),
                    None,
                    None,
                )
            });
        Group {
            binding: Binding {
                oid: self.tview_oid,
                sync: self.sync,
                name: Some((schema, table)),
            },
            columns: self.columns.to_vec(),
        }
    }

    /// Puts this TVIEW into the source's capture triggers (replacing what they carried for it
    /// there; its groups on other tables stay).
    pub fn install(&self) {
        rewrite(&|_| false, &[(self.source_oid, self.group())], &[]);
    }
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

/// Every partition below `oid` (all levels); empty for a plain table.
fn partitions(oid: pg_sys::Oid) -> Vec<pg_sys::Oid> {
    Spi::get_one_with_args::<Vec<pg_sys::Oid>>(
        "SELECT coalesce(array_agg(t.relid::oid ORDER BY t.relid), '{}') \
         FROM pg_catalog.pg_partition_tree($1) t WHERE t.level > 0",
        &[oid.into()],
    )
    .ok()
    .flatten()
    .unwrap_or_default()
}

/// An SPI failure reading the catalogs: the caller's statement fails with it.
fn fail(what: &str, e: spi::Error) -> ! {
    crate::errors::Error::from(e).raise(&format!("could not {what}"))
}

/// One capture trigger of ours (calling either capture function) on a relation.
#[derive(Debug)]
pub struct Installed {
    pub relid: pg_sys::Oid,
    pub name: String,
    /// Not `DISABLE`d.
    pub enabled: bool,
    /// A partition's clone of its parent's row trigger (it goes with the parent's).
    pub clone: bool,
    /// The TVIEWs it feeds; empty when its arguments do not parse.
    pub groups: Vec<Group>,
    /// A per-TVIEW trigger of 0.5.0 and earlier: its entity.
    pub legacy: Option<String>,
}

impl Installed {
    fn new(
        relid: pg_sys::Oid,
        name: String,
        (enabled, clone, family): (bool, bool, bool),
        args: &[String],
    ) -> Installed {
        let (groups, legacy) = if family {
            (Group::parse_all(args).unwrap_or_default(), None)
        } else {
            let mut group = Group::parse_one(args);
            // Bindings of 0.3.0 and earlier carry only an oid: named after the relation it
            // designates now, so that the group keeps its TVIEW through a later restore.
            if let Some(g) = group.as_mut().filter(|g| g.binding.name.is_none()) {
                g.binding.name = relation_name(pg_sys::Oid::from(g.binding.oid));
            }
            (group.into_iter().collect(), legacy_entity(&name))
        };
        Installed {
            relid,
            name,
            enabled,
            clone,
            groups,
            legacy,
        }
    }

    fn truncate(&self) -> bool {
        self.name == PARTITION_TRUNC || self.name == "tview_trunc" || self.name.ends_with("_trunc")
    }

    /// Carries a group of TVIEW `tview` (as the trigger function resolves it).
    pub fn feeds(&self, tview: u32) -> bool {
        self.groups.iter().any(|g| g.binding.resolve() == tview)
    }
}

/// The oids of `pg_tviews_capture` and `pg_tviews_capture_source` in the extension's schema
/// (`InvalidOid` for one the installed schema version lacks).
fn functions() -> (pg_sys::Oid, pg_sys::Oid) {
    let schema = super::tview::extension_schema();
    let oids = Spi::get_one_with_args::<Vec<pg_sys::Oid>>(
        "SELECT ARRAY[coalesce(pg_catalog.to_regprocedure(pg_catalog.format('%I.pg_tviews_capture()', $1))::oid, 0), \
                      coalesce(pg_catalog.to_regprocedure(pg_catalog.format('%I.pg_tviews_capture_source()', $1))::oid, 0)]",
        &[schema.as_str().into()],
    )
    .unwrap_or_else(|e| fail("find the capture functions", e))
    .unwrap_or_default();
    match oids.as_slice() {
        [legacy, family] => (*legacy, *family),
        _ => (pg_sys::InvalidOid, pg_sys::InvalidOid),
    }
}

/// Our triggers, on `relid` or everywhere, as this transaction's snapshot sees them.
pub fn installed(relid: Option<pg_sys::Oid>) -> Vec<Installed> {
    let (legacy, family) = functions();
    Spi::connect(|client| {
        let mut out = Vec::new();
        for row in client.select(
            "SELECT t.tgrelid, t.tgname::text, t.tgenabled <> 'D', t.tgparentid <> 0, t.tgfoid = $2, \
                    t.tgnargs::int, t.tgargs \
             FROM pg_catalog.pg_trigger t \
             WHERE t.tgfoid IN ($1, $2) AND t.tgfoid <> 0 AND ($3::oid IS NULL OR t.tgrelid = $3) \
             ORDER BY t.tgrelid, t.tgname",
            None,
            &[legacy.into(), family.into(), relid.into()],
        )? {
            let nargs = row.get::<i32>(6)?.unwrap_or(0).max(0) as usize;
            let raw = row.get::<Vec<u8>>(7)?.unwrap_or_default();
            let args: Vec<String> = raw
                .split(|&b| b == 0)
                .take(nargs)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            out.push(Installed::new(
                row.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                row.get::<String>(2)?.unwrap_or_default(),
                (
                    row.get::<bool>(3)?.unwrap_or(false),
                    row.get::<bool>(4)?.unwrap_or(false),
                    row.get::<bool>(5)?.unwrap_or(false),
                ),
                &args,
            ));
        }
        Ok::<_, spi::Error>(out)
    })
    .unwrap_or_else(|e| fail("read the capture triggers", e))
}

/// Our triggers on `relid` after taking SHARE ROW EXCLUSIVE on it (what CREATE TRIGGER takes),
/// read from its relcache entry: a concurrent rewrite of the same table has committed by then,
/// and the relcache shows it whatever this transaction's snapshot (which an SQL read of
/// `pg_trigger` would use under REPEATABLE READ). Empty when the relation is gone.
fn installed_locked(
    relid: pg_sys::Oid,
    (legacy, family): (pg_sys::Oid, pg_sys::Oid),
) -> Vec<Installed> {
    let mut raw = Vec::new();
    // SAFETY: try_relation_open returns NULL for a dropped relation instead of raising; the
    // relation stays open (and its trigger descriptor valid) until relation_close, and the
    // lock is kept until the end of the transaction. The strings of the descriptor are
    // NUL-terminated and copied out before the close; nothing in between can raise.
    unsafe {
        let rel =
            pg_sys::try_relation_open(relid, pg_sys::ShareRowExclusiveLock as pg_sys::LOCKMODE);
        if rel.is_null() {
            return Vec::new();
        }
        let desc = (*rel).trigdesc;
        if !desc.is_null() {
            for i in 0..(*desc).numtriggers.max(0) as usize {
                let t = &*(*desc).triggers.add(i);
                if t.tgfoid == pg_sys::InvalidOid || (t.tgfoid != legacy && t.tgfoid != family) {
                    continue;
                }
                let text = |p: *const std::ffi::c_char| {
                    std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
                };
                let args: Vec<String> = (0..t.tgnargs.max(0) as usize)
                    .map(|a| text(*t.tgargs.add(a)))
                    .collect();
                raw.push((
                    text(t.tgname),
                    (t.tgenabled as u8 != b'D', t.tgisclone, t.tgfoid == family),
                    args,
                ));
            }
        }
        pg_sys::relation_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
    }
    raw.into_iter()
        .map(|(name, flags, args)| Installed::new(relid, name, flags, &args))
        .collect()
}

/// The triggers of `relid`'s own family (not clones, not the TRUNCATE triggers a partition
/// carries for its partitioned ancestors), and the others.
fn split_own(inst: Vec<Installed>, partitioned: bool) -> (Vec<Installed>, Vec<Installed>) {
    let own_legacy: Vec<String> = inst
        .iter()
        .filter(|i| !i.clone && !i.truncate())
        .filter_map(|i| i.legacy.clone())
        .collect();
    inst.into_iter()
        .filter(|i| !i.clone)
        .partition(|i| match &i.legacy {
            Some(entity) => own_legacy.contains(entity),
            None if partitioned => PARTITIONED.contains(&i.name.as_str()),
            None => PLAIN.contains(&i.name.as_str()) || PLAIN_FULL.contains(&i.name.as_str()),
        })
}

/// The groups `triggers` carry, one per TVIEW (the first trigger naming it wins), in argument
/// order.
fn carried(triggers: &[Installed]) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::new();
    let mut seen: Vec<u32> = Vec::new();
    // The row trigger exists in every shape and carries every group: read first.
    let mut ordered: Vec<&Installed> = triggers.iter().collect();
    ordered.sort_by_key(|i| (i.legacy.is_some(), !i.name.ends_with("row"), i.name.clone()));
    for trigger in ordered {
        for group in &trigger.groups {
            let tview = group.binding.resolve();
            if !seen.contains(&tview) {
                seen.push(tview);
                out.push(group.clone());
            }
        }
    }
    out.sort_by_key(|g| g.binding.to_arg());
    out
}

/// Rewrites our capture triggers: on every table they carry a group `remove` selects, that
/// group goes; each `(source, group)` of `add` is put in (replacing the source's group of the
/// same TVIEW); each table in `also` is rewritten in the current layout. Tables are locked
/// (SHARE ROW EXCLUSIVE) and re-read before they are written, so two sessions changing the
/// TVIEWs of one table never lose each other's groups; tables nothing changes on are not
/// locked.
pub fn rewrite(
    remove: &dyn Fn(&Group) -> bool,
    add: &[(pg_sys::Oid, Group)],
    also: &[pg_sys::Oid],
) {
    let _busy = super::tview::BusyGuard::enter();
    let functions = functions();
    let mut targets: Vec<pg_sys::Oid> = add
        .iter()
        .map(|(source, _)| *source)
        .chain(also.iter().copied())
        .collect();
    let everywhere = installed(None);
    for trigger in &everywhere {
        if !trigger.clone && trigger.groups.iter().any(remove) {
            targets.push(trigger.relid);
        }
    }
    // In oid order: two sessions rewriting the same tables lock them in the same order.
    targets.sort_by_key(|o| o.to_u32());
    targets.dedup();
    let schema = quote_identifier(super::tview::extension_schema());
    let mut covered = Vec::new();
    let mut inherited_only = Vec::new();
    // Sources first: a partitioned source rewrites its partitions' TRUNCATE triggers too.
    for &relid in &targets {
        let partitioned = is_partitioned(relid);
        let (own, _) = split_own(installed_locked(relid, functions), partitioned);
        let adds: Vec<&Group> = add
            .iter()
            .filter(|(s, _)| *s == relid)
            .map(|(_, g)| g)
            .collect();
        if own.is_empty() && adds.is_empty() && !also.contains(&relid) {
            inherited_only.push(relid);
            continue;
        }
        let mut groups: Vec<Group> = carried(&own)
            .into_iter()
            .filter(|g| !remove(g))
            .filter(|g| {
                !adds
                    .iter()
                    .any(|a| a.binding.resolve() == g.binding.resolve())
            })
            .collect();
        groups.extend(adds.into_iter().cloned());
        groups.sort_by_key(|g| g.binding.to_arg());
        // The table's triggers are shared: one dropped or disabled by hand missed writes for
        // every TVIEW it carried, not only for the one being repaired. Those that keep their
        // group are recomputed after this commit (nothing else would notice once the
        // triggers are whole again).
        let parts = if partitioned {
            partitions(relid)
        } else {
            Vec::new()
        };
        let damaged: Vec<u32> = carried(&own)
            .iter()
            .map(|g| g.binding.resolve())
            .filter(|&tview| !complete(&own, &everywhere, partitioned, &parts, tview))
            .filter(|&tview| groups.iter().any(|g| g.binding.resolve() == tview))
            .collect();
        covered.extend(write_source(
            relid,
            partitioned,
            &groups,
            &own,
            &schema,
            functions,
        ));
        for tview in damaged {
            crate::capture::enqueue_full_refresh_after_commit(tview);
        }
    }
    // Tables that carry only TRUNCATE triggers of a partitioned ancestor not rewritten above
    // (a partition detached since): the groups `remove` selects go.
    for relid in inherited_only {
        if covered.contains(&relid) {
            continue;
        }
        let (_, inherited) = split_own(installed_locked(relid, functions), is_partitioned(relid));
        let groups: Vec<Group> = carried(&inherited)
            .into_iter()
            .filter(|g| !remove(g))
            .collect();
        let Some(relation) = qualified_name(relid) else {
            continue;
        };
        if functions.1 == pg_sys::InvalidOid {
            // A schema older than 0.6.0: per-TVIEW triggers, one group each; only those of
            // the TVIEWs `remove` selects go.
            for trigger in inherited.iter().filter(|i| i.groups.iter().any(remove)) {
                drop_trigger(&trigger.name, &relation);
            }
            continue;
        }
        for trigger in &inherited {
            drop_trigger(&trigger.name, &relation);
        }
        if !groups.is_empty() {
            create_partition_trunc(&relation, &function(&schema, &groups));
        }
    }
}

/// `own` (a table's family) and the snapshot's `tview_ptrunc` triggers of its partitions
/// capture every write for `tview`: one layout's triggers all there, enabled, feeding it.
fn complete(
    own: &[Installed],
    everywhere: &[Installed],
    partitioned: bool,
    parts: &[pg_sys::Oid],
    tview: u32,
) -> bool {
    let layouts: &[&[&str]] = if partitioned {
        &[&PARTITIONED]
    } else {
        &[&PLAIN, &PLAIN_FULL]
    };
    let has = |i: &Installed, name: &str| !i.clone && i.name == name && i.enabled && i.feeds(tview);
    let family = layouts
        .iter()
        .any(|names| names.iter().all(|n| own.iter().any(|i| has(i, n))));
    // A table still in the per-TVIEW layout of 0.5.0: complete as far as this check goes.
    let legacy = own.iter().any(|i| i.legacy.is_some() && i.feeds(tview));
    let partitions = parts.iter().all(|p| {
        legacy
            || everywhere
                .iter()
                .any(|i| i.relid == *p && has(i, PARTITION_TRUNC))
    });
    (family || legacy) && partitions
}

fn function(schema: &str, groups: &[Group]) -> String {
    format!(
        "{schema}.pg_tviews_capture_source({})",
        quote_literal(Group::encode_all(groups))
    )
}

fn drop_trigger(name: &str, relation: &str) {
    run(&format!(
        "DROP TRIGGER IF EXISTS {} ON {relation}",
        quote_identifier(name)
    ));
}

fn create_partition_trunc(relation: &str, function: &str) {
    run(&format!(
        "CREATE TRIGGER {PARTITION_TRUNC} AFTER TRUNCATE ON {relation} \
         FOR EACH STATEMENT EXECUTE FUNCTION {function}"
    ));
    run(&format!(
        "ALTER TABLE {relation} ENABLE ALWAYS TRIGGER {PARTITION_TRUNC}"
    ));
}

/// Replaces the family of one source table (`own`: what it has now) by one carrying `groups`
/// (none: no trigger at all), with the TRUNCATE triggers of its partitions. Returns the
/// partitions it covered.
fn write_source(
    relid: pg_sys::Oid,
    partitioned: bool,
    groups: &[Group],
    own: &[Installed],
    schema: &str,
    functions: (pg_sys::Oid, pg_sys::Oid),
) -> Vec<pg_sys::Oid> {
    let Some(source) = qualified_name(relid) else {
        return Vec::new();
    };
    for trigger in own {
        drop_trigger(&trigger.name, &source);
    }
    let function = function(schema, groups);
    let parts = if partitioned {
        partitions(relid)
    } else {
        Vec::new()
    };
    let own_legacy: Vec<&String> = own.iter().filter_map(|i| i.legacy.as_ref()).collect();
    let mut part_names = Vec::new();
    for &partition in &parts {
        let Some(relation) = qualified_name(partition) else {
            continue;
        };
        let (_, inherited) = split_own(
            installed_locked(partition, functions),
            is_partitioned(partition),
        );
        for trigger in inherited {
            let ours = match &trigger.legacy {
                Some(entity) => own_legacy.contains(&entity),
                None => trigger.name == PARTITION_TRUNC,
            };
            if ours {
                drop_trigger(&trigger.name, &relation);
            }
        }
        part_names.push(relation);
    }
    if functions.1 == pg_sys::InvalidOid {
        // The schema is older than the library (before ALTER EXTENSION UPDATE to 0.6.0): it
        // has no pg_tviews_capture_source, so each TVIEW gets its own triggers, as then.
        write_legacy(&source, partitioned, groups, schema, &part_names);
        return parts;
    }
    for relation in &part_names {
        if !groups.is_empty() {
            create_partition_trunc(relation, &function);
        }
    }
    if groups.is_empty() {
        return parts;
    }
    let mut statements = Vec::new();
    if partitioned {
        statements.push(format!(
            "CREATE TRIGGER tview_prow AFTER INSERT OR UPDATE OR DELETE ON {source} \
             FOR EACH ROW EXECUTE FUNCTION {function}"
        ));
        statements.push(format!(
            "ALTER TABLE {source} ENABLE ALWAYS TRIGGER tview_prow"
        ));
        statements.push(format!(
            "CREATE TRIGGER {PARTITION_TRUNC} AFTER TRUNCATE ON {source} \
             FOR EACH STATEMENT EXECUTE FUNCTION {function}"
        ));
        statements.push(format!(
            "ALTER TABLE {source} ENABLE ALWAYS TRIGGER {PARTITION_TRUNC}"
        ));
    } else {
        if groups.iter().all(Group::full_only) {
            // No TVIEW needs the changed rows: no transition tables are kept.
            statements.push(format!(
                "CREATE TRIGGER tview_full AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {source} \
                 FOR EACH STATEMENT EXECUTE FUNCTION {function}"
            ));
            statements.push(format!(
                "ALTER TABLE {source} ENABLE ALWAYS TRIGGER tview_full"
            ));
        } else {
            statements.push(format!(
                "CREATE TRIGGER tview_ins AFTER INSERT ON {source} REFERENCING NEW TABLE AS tview_new \
                 FOR EACH STATEMENT EXECUTE FUNCTION {function}"
            ));
            statements.push(format!(
                "CREATE TRIGGER tview_upd AFTER UPDATE ON {source} REFERENCING OLD TABLE AS tview_old NEW TABLE AS tview_new \
                 FOR EACH STATEMENT EXECUTE FUNCTION {function}"
            ));
            statements.push(format!(
                "CREATE TRIGGER tview_del AFTER DELETE ON {source} REFERENCING OLD TABLE AS tview_old \
                 FOR EACH STATEMENT EXECUTE FUNCTION {function}"
            ));
            statements.push(format!(
                "CREATE TRIGGER tview_trunc AFTER TRUNCATE ON {source} \
                 FOR EACH STATEMENT EXECUTE FUNCTION {function}"
            ));
            statements.push(format!(
                "ALTER TABLE {source} ENABLE ALWAYS TRIGGER tview_trunc"
            ));
        }
        statements.push(format!(
            "CREATE TRIGGER tview_row AFTER INSERT OR UPDATE OR DELETE ON {source} \
             FOR EACH ROW EXECUTE FUNCTION {function}"
        ));
        statements.push(format!(
            "ALTER TABLE {source} ENABLE REPLICA TRIGGER tview_row"
        ));
    }
    for statement in statements {
        run(&statement);
    }
    parts
}

/// The per-TVIEW triggers of 0.5.0 and earlier (`tview_<entity>_<suffix>` calling
/// `pg_tviews_capture`), for a schema that predates the families.
fn write_legacy(source: &str, partitioned: bool, groups: &[Group], schema: &str, parts: &[String]) {
    for group in groups {
        let Some(entity) = group_entity(group) else {
            continue;
        };
        let mut args = vec![quote_literal(group.binding.to_arg())];
        for (column, kind) in &group.columns {
            args.push(quote_literal(column));
            args.push(quote_literal(kind.to_string()));
        }
        let function = format!("{schema}.pg_tviews_capture({})", args.join(", "));
        let name = |suffix: &str| quote_identifier(format!("tview_{entity}_{suffix}"));
        let (row, trunc) = (name("row"), name("trunc"));
        let mut statements = vec![format!(
            "CREATE TRIGGER {row} AFTER INSERT OR UPDATE OR DELETE ON {source} \
             FOR EACH ROW EXECUTE FUNCTION {function}"
        )];
        let mut truncated: Vec<&str> = Vec::new();
        if partitioned {
            statements.push(format!("ALTER TABLE {source} ENABLE ALWAYS TRIGGER {row}"));
            truncated.push(source);
            truncated.extend(parts.iter().map(String::as_str));
        } else {
            statements.push(format!("ALTER TABLE {source} ENABLE REPLICA TRIGGER {row}"));
            if group.full_only() {
                let full = name("full");
                statements.push(format!(
                    "CREATE TRIGGER {full} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {source} \
                     FOR EACH STATEMENT EXECUTE FUNCTION {function}"
                ));
                statements.push(format!("ALTER TABLE {source} ENABLE ALWAYS TRIGGER {full}"));
            } else {
                for (suffix, event, transitions) in [
                    ("ins", "INSERT", "NEW TABLE AS tview_new"),
                    (
                        "upd",
                        "UPDATE",
                        "OLD TABLE AS tview_old NEW TABLE AS tview_new",
                    ),
                    ("del", "DELETE", "OLD TABLE AS tview_old"),
                ] {
                    statements.push(format!(
                        "CREATE TRIGGER {} AFTER {event} ON {source} REFERENCING {transitions} \
                         FOR EACH STATEMENT EXECUTE FUNCTION {function}",
                        name(suffix)
                    ));
                }
                truncated.push(source);
            }
        }
        for relation in truncated {
            statements.push(format!(
                "CREATE TRIGGER {trunc} AFTER TRUNCATE ON {relation} \
                 FOR EACH STATEMENT EXECUTE FUNCTION {function}"
            ));
            statements.push(format!(
                "ALTER TABLE {relation} ENABLE ALWAYS TRIGGER {trunc}"
            ));
        }
        for statement in statements {
            run(&statement);
        }
    }
}

/// Gives every partition of a partitioned source that lacks one its `tview_ptrunc` trigger
/// (statement triggers are not cloned onto partitions); idempotent. A source still in the
/// per-TVIEW layout of 0.5.0 is rewritten in the current one.
pub fn cover_partitions(source: pg_sys::Oid) {
    let (own, _) = split_own(installed(Some(source)), true);
    if own.iter().any(|i| i.legacy.is_some()) {
        rewrite(&|_| false, &[], &[source]);
        return;
    }
    let groups = carried(&own);
    if groups.is_empty() {
        return;
    }
    let schema = quote_identifier(super::tview::extension_schema());
    let function = function(&schema, &groups);
    for partition in partitions(source) {
        let covered = installed(Some(partition))
            .iter()
            .any(|i| !i.clone && i.name == PARTITION_TRUNC);
        if let (false, Some(relation)) = (covered, qualified_name(partition)) {
            create_partition_trunc(&relation, &function);
        }
    }
}

/// Takes the TVIEW of `entity` out of every capture trigger, wherever it is (also on a table
/// detached from a partitioned source since); clones of a partitioned parent's row trigger
/// go with it.
pub fn drop_all(entity: &str) {
    rewrite(&|g| group_entity(g) == Some(entity), &[], &[]);
    // Per-TVIEW triggers of 0.5.0 whose arguments do not parse (hand-made, damaged).
    for trigger in installed(None) {
        if !trigger.clone && trigger.legacy.as_deref() == Some(entity) {
            if let Some(relation) = qualified_name(trigger.relid) {
                drop_trigger(&trigger.name, &relation);
            }
        }
    }
}

/// Some capture trigger carries the TVIEW of `entity`.
pub fn carries(entity: &str) -> bool {
    installed(None).iter().any(|i| {
        i.legacy.as_deref() == Some(entity)
            || i.groups.iter().any(|g| group_entity(g) == Some(entity))
    })
}

/// Every entity some capture trigger carries (a TVIEW whose metadata is lost is found here).
pub fn entities() -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for trigger in installed(None) {
        if trigger.clone {
            continue;
        }
        out.extend(trigger.legacy.clone());
        out.extend(
            trigger
                .groups
                .iter()
                .filter_map(|g| group_entity(g).map(str::to_string)),
        );
    }
    out.sort();
    out.dedup();
    out
}

/// The per-TVIEW trigger names (0.5.0 and earlier) a TVIEW had on a source table itself.
fn legacy_expected(entity: &str, partitioned: bool, full_only: bool) -> Vec<String> {
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

/// What is wrong with the capture of each TVIEW (or of one): `(entity, problem)` for every
/// capture trigger that should carry it and does not (missing, `ALTER TABLE ... DISABLE
/// TRIGGER`: as stale as a missing one, or carrying no group that resolves to the TVIEW: a
/// trigger restored from a dump made before triggers carried names, or copied by hand), and
/// for a TVIEW without lineage. Read from the catalogs, independently of what the triggers
/// themselves do. A TVIEW still captured by its per-TVIEW triggers of 0.5.0 is healthy.
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
            "SELECT m.entity, m.table_oid::oid, l.source_oid::oid, bool_and(l.capture_column = ''), \
                    (SELECT relkind = 'p' FROM pg_catalog.pg_class WHERE oid = l.source_oid) \
             FROM pg_tview_meta m JOIN pg_tview_lineage l ON l.tview_oid = m.table_oid \
             WHERE ($1::oid IS NULL OR m.table_oid = $1) \
               AND EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE oid = l.source_oid) AND l.rule >= 0 \
             GROUP BY m.entity, m.table_oid, l.source_oid ORDER BY 1, 3",
            None,
            &[only.into()],
        )? {
            sources.push((
                row.get::<String>(1)?.unwrap_or_default(),
                row.get::<pg_sys::Oid>(2)?.unwrap_or(pg_sys::InvalidOid),
                row.get::<pg_sys::Oid>(3)?.unwrap_or(pg_sys::InvalidOid),
                row.get::<bool>(4)?.unwrap_or(false),
                row.get::<bool>(5)?.unwrap_or(false),
            ));
        }
        Ok::<_, spi::Error>((tviews, sources))
    });
    let (tviews, sources) = read.unwrap_or_else(|e| fail("read lineage", e));
    let all = installed(None);
    let mut problems = Vec::new();
    for (entity, _, has_lineage) in &tviews {
        if !has_lineage {
            problems.push((entity.clone(), "no lineage rows".to_string()));
        }
    }
    let name = |relid: pg_sys::Oid| qualified_name(relid).unwrap_or_else(|| relid.to_string());
    for (entity, tview, source, full_only, partitioned) in sources {
        let tview = tview.to_u32();
        let parts = if partitioned {
            partitions(source)
        } else {
            Vec::new()
        };
        // (relation, trigger name) pairs the layout needs, and those not there, enabled, feeding
        // this TVIEW.
        let missing = |needed: Vec<(pg_sys::Oid, String)>, check_feed: bool| -> Vec<String> {
            needed
                .into_iter()
                .filter(|(relid, trigger)| {
                    !all.iter().any(|i| {
                        i.relid == *relid
                            && !i.clone
                            && &i.name == trigger
                            && i.enabled
                            && (!check_feed || i.feeds(tview))
                    })
                })
                .map(|(relid, trigger)| format!("{trigger} on {}", name(relid)))
                .collect()
        };
        let layouts: Vec<&[&str]> = if partitioned {
            vec![&PARTITIONED]
        } else {
            vec![&PLAIN, &PLAIN_FULL]
        };
        let family: Vec<Vec<String>> = layouts
            .into_iter()
            .map(|names| {
                let mut needed: Vec<(pg_sys::Oid, String)> =
                    names.iter().map(|n| (source, n.to_string())).collect();
                needed.extend(parts.iter().map(|p| (*p, PARTITION_TRUNC.to_string())));
                missing(needed, true)
            })
            .collect();
        let mut legacy_needed: Vec<(pg_sys::Oid, String)> =
            legacy_expected(&entity, partitioned, full_only)
                .into_iter()
                .map(|n| (source, n))
                .collect();
        legacy_needed.extend(parts.iter().map(|p| (*p, format!("tview_{entity}_trunc"))));
        let legacy = missing(legacy_needed, false);
        if legacy.is_empty() || family.iter().any(Vec::is_empty) {
            continue;
        }
        let fewest = family.into_iter().min_by_key(Vec::len).unwrap_or_default();
        problems.push((
            entity.clone(),
            format!("missing or disabled: {}", fewest.join(", ")),
        ));
    }
    // Per-TVIEW triggers (0.5.0) that exist but feed something else: their first argument,
    // resolved as the trigger function resolves it.
    for (entity, table_oid, _) in &tviews {
        let elsewhere: Vec<String> = all
            .iter()
            .filter(|i| !i.clone && i.legacy.as_deref() == Some(entity.as_str()))
            .filter(|i| !i.feeds(table_oid.to_u32()))
            .map(|i| format!("{} on {}", i.name, name(i.relid)))
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

/// Capture triggers that feed no TVIEW of the metadata: `trigger on table (TVIEW)` for each
/// group of a family that resolves to none, and each per-TVIEW trigger (0.5.0) not named for a
/// TVIEW over that table.
pub fn orphans() -> Vec<String> {
    let known = Spi::connect(|client| {
        let mut out = Vec::new();
        for row in client.select(
            "SELECT m.table_oid::oid, m.entity, \
                    coalesce((SELECT array_agg(p.relid::oid) FROM unnest(m.dependencies) d(oid) \
                              CROSS JOIN LATERAL pg_catalog.pg_partition_tree(d.oid) p), '{}') \
             FROM pg_tview_meta m",
            None,
            &[],
        )? {
            out.push((
                row.get::<pg_sys::Oid>(1)?
                    .unwrap_or(pg_sys::InvalidOid)
                    .to_u32(),
                row.get::<String>(2)?.unwrap_or_default(),
                row.get::<Vec<pg_sys::Oid>>(3)?.unwrap_or_default(),
            ));
        }
        Ok::<_, spi::Error>(out)
    })
    .unwrap_or_else(|e| fail("read pg_tview_meta", e));
    let mut out = Vec::new();
    for trigger in installed(None) {
        if trigger.clone {
            continue;
        }
        let relation = qualified_name(trigger.relid).unwrap_or_else(|| trigger.relid.to_string());
        match &trigger.legacy {
            Some(entity) => {
                if !known
                    .iter()
                    .any(|(_, e, tables)| e == entity && tables.contains(&trigger.relid))
                {
                    out.push(format!("{} on {relation}", trigger.name));
                }
            }
            None => {
                for group in &trigger.groups {
                    let tview = group.binding.resolve();
                    if !known.iter().any(|(oid, _, _)| *oid == tview) {
                        let what = group
                            .binding
                            .name
                            .as_ref()
                            .map(|(_, t)| t.clone())
                            .unwrap_or_else(|| tview.to_string());
                        out.push(format!("{} on {relation} ({what})", trigger.name));
                    }
                }
            }
        }
    }
    out
}

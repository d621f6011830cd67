//! `pg_tviews_health_check()`: one function per check, each returning its row(s) (`OK`,
//! `WARNING` or `CRITICAL`, with a detail saying why and what to do). Runs in user backends.
//!
//! The checks in output order: with the queue `shared_preload_libraries`, `launcher`,
//! `worker`, `recovery`, `enabled`, `queue_depth`, `lag`, `overflow`, `refresh_errors`,
//! `journal`; always `triggers`, `orphaned_triggers`, `dead_letters`, `read_only`, `blocked`,
//! `uncaptured`, `drift`, `metadata`.

use super::triggers;
use crate::queue::{self, status};
use crate::{catalog, gucs};
use pgrx::prelude::*;

type Check = (String, String, String);

fn check(name: &str, status: &str, detail: impl Into<String>) -> Check {
    (name.to_string(), status.to_string(), detail.into())
}

/// What several checks look at, read once.
struct Context {
    tview_count: i64,
    in_recovery: bool,
    /// This database's worker slots.
    workers: Vec<status::SlotSnapshot>,
    stats: Vec<status::TviewQueueStat>,
    /// µs since 2000.
    now: i64,
}

impl Context {
    fn read() -> Context {
        let (dboid, now) = (crate::pg::database_id(), crate::pg::now());
        Context {
            tview_count: Spi::get_one::<i64>("SELECT count(*) FROM pg_tview_meta")
                .ok()
                .flatten()
                .unwrap_or(0),
            in_recovery: Spi::get_one::<bool>("SELECT pg_is_in_recovery()")
                .ok()
                .flatten()
                .unwrap_or(false),
            workers: status::slots()
                .into_iter()
                .filter(|s| s.dboid == dboid)
                .collect(),
            stats: status::tview_stats(dboid),
            now,
        }
    }
}

/// One row per check.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, @extschema@)]
fn pg_tviews_health_check() -> TableIterator<
    'static,
    (
        name!(check_name, String),
        name!(status, String),
        name!(detail, String),
    ),
> {
    let ctx = Context::read();
    let mut out: Vec<Check> = Vec::new();
    if !queue::is_attached() {
        out.push(check(
            "shared_preload_libraries",
            "WARNING",
            "pg_tviews_bgw is not preloaded: TVIEWs are refreshed synchronously inside each write. \
             Add it to shared_preload_libraries and restart for background refresh.",
        ));
    } else {
        out.push(check(
            "shared_preload_libraries",
            "OK",
            "library preloaded, shared memory attached",
        ));
        out.push(launcher(&ctx));
        out.extend(worker(&ctx));
        out.extend(recovery(&ctx));
        out.extend(enabled());
        out.push(queue_depth(&ctx));
        out.push(lag(&ctx));
        out.extend(overflow());
        out.extend(refresh_errors(&ctx));
        out.extend(journal());
    }
    out.push(capture_triggers());
    out.push(orphaned_triggers());
    out.push(dead_letters());
    out.extend(read_only(&ctx));
    out.push(blocked());
    out.push(uncaptured());
    out.extend(drift());
    out.push(metadata(&ctx));
    TableIterator::new(out)
}

fn launcher(ctx: &Context) -> Check {
    let launcher = Spi::get_one::<i64>(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_tviews_bgw launcher'",
    )
    .ok()
    .flatten()
    .unwrap_or(0);
    match (launcher, ctx.in_recovery) {
        (_, true) => check(
            "launcher",
            "OK",
            "standby: no launcher or workers run during recovery",
        ),
        (0, false) => check(
            "launcher",
            "CRITICAL",
            "launcher not running; check the server log",
        ),
        _ => check("launcher", "OK", "running"),
    }
}

/// None on a standby (no workers run there).
fn worker(ctx: &Context) -> Option<Check> {
    let workers = &ctx.workers;
    let running: Vec<&status::SlotSnapshot> = workers.iter().filter(|s| s.pid != 0).collect();
    match (workers.len(), running.len(), ctx.tview_count, ctx.in_recovery) {
        (_, _, _, true) => None,
        (n, r, _, _) if n > 0 && r == n => Some(check(
            "worker",
            "OK",
            running
                .iter()
                .map(|s| format!("pid {} {} ({} batches, {} rows)", s.pid, s.state.label(), s.batches, s.rows))
                .collect::<Vec<_>>()
                .join("; "),
        )),
        (_, _, 0, _) => Some(check("worker", "OK", "no TVIEWs in this database yet")),
        (n, r, _, _) if r > 0 => Some(check(
            "worker",
            "WARNING",
            format!("{r} of {n} workers running; the others are restarting or waiting for a max_worker_processes slot"),
        )),
        _ => Some(check(
            "worker",
            "CRITICAL",
            workers
                .iter()
                .find_map(|s| s.last_error.clone())
                .unwrap_or_else(|| "no worker is running for this database; check max_worker_processes and pg_tviews_bgw.max_workers".to_string()),
        )),
    }
}

/// None on a standby.
fn recovery(ctx: &Context) -> Option<Check> {
    if ctx.in_recovery {
        return None;
    }
    let recovering = ctx.workers.iter().any(|s| s.recovery_pending);
    let journal = gucs::durability() == gucs::Durability::Journal;
    Some(match (recovering, journal) {
        (true, true) => check(
            "recovery",
            "WARNING",
            "replaying the journal (after a start, a crash or a queue overflow): TVIEWs may be stale until it completes",
        ),
        (true, false) => check(
            "recovery",
            "WARNING",
            "reconciling every TVIEW (durability = none, after a start, a crash or a queue overflow): TVIEWs may be stale until it completes",
        ),
        (false, _) => check("recovery", "OK", "no recovery pending"),
    })
}

/// Only when draining is switched off.
fn enabled() -> Option<Check> {
    (!gucs::enabled()).then(|| {
        check(
            "enabled",
            "WARNING",
            "pg_tviews_bgw.enabled is off: changes are queued but not applied",
        )
    })
}

fn queue_depth(ctx: &Context) -> Check {
    let pending: u64 = ctx.stats.iter().map(|s| s.pending).sum();
    let threshold = gucs::health_queue_depth();
    if pending > threshold {
        check(
            "queue_depth",
            "WARNING",
            format!("{pending} keys pending (threshold {threshold})"),
        )
    } else {
        check("queue_depth", "OK", format!("{pending} keys pending"))
    }
}

fn lag(ctx: &Context) -> Check {
    let oldest = ctx.stats.iter().filter_map(|s| s.oldest_committed_at).min();
    let lag_ms = oldest.map_or(0, |t| (ctx.now - t).max(0) / 1000);
    let limit = gucs::health_lag_ms();
    if lag_ms > limit {
        check(
            "lag",
            "WARNING",
            format!("oldest pending key is {lag_ms} ms old (threshold {limit} ms)"),
        )
    } else {
        check(
            "lag",
            "OK",
            format!("oldest pending key is {lag_ms} ms old"),
        )
    }
}

fn overflow() -> Option<Check> {
    let c = status::counters()?;
    Some(if c.overflowed > 0 {
        check(
            "overflow",
            "WARNING",
            format!(
                "{} keys overflowed since start-up and were recovered from the journal or by full reconciles; raise pg_tviews_bgw.queue_size",
                c.overflowed
            ),
        )
    } else {
        check("overflow", "OK", "no overflow since start-up")
    })
}

/// Only when a worker recorded an error in the last five minutes.
fn refresh_errors(ctx: &Context) -> Option<Check> {
    let (at, error) = ctx
        .workers
        .iter()
        .filter_map(|s| s.last_error.clone().map(|e| (s.last_error_at, e)))
        .max_by_key(|(at, _)| *at)?;
    let age_s = (ctx.now - at) / 1_000_000;
    (age_s < 300).then(|| {
        check(
            "refresh_errors",
            "WARNING",
            format!("{age_s} s ago: {error}"),
        )
    })
}

/// Only with `durability = journal`.
fn journal() -> Option<Check> {
    if gucs::durability() != gucs::Durability::Journal {
        return None;
    }
    let bytes = Spi::get_one::<i64>(&format!(
        "SELECT coalesce(sum(pg_catalog.pg_total_relation_size(c.oid)), 0)::bigint \
         FROM pg_catalog.pg_class c \
         WHERE c.relname IN {} \
           AND c.relnamespace = (SELECT extnamespace FROM pg_catalog.pg_extension WHERE extname = 'pg_tviews_bgw')",
        crate::journal::TABLE_LIST_SQL
    ))
    .ok()
    .flatten()
    .unwrap_or(0);
    let limit_mb = gucs::health_journal_mb();
    let mb = bytes / (1024 * 1024);
    Some(if mb > limit_mb {
        check(
            "journal",
            "WARNING",
            format!("journal tables hold {mb} MB (threshold {limit_mb} MB): keys are not being applied, or a long transaction keeps a table from being truncated"),
        )
    } else {
        check(
            "journal",
            "OK",
            format!("{} kB in the journal tables", bytes / 1024),
        )
    })
}

/// Each source needs the triggers of its kind (api::triggers), enabled and feeding this TVIEW,
/// and every partition of a partitioned source its TRUNCATE trigger.
fn capture_triggers() -> Check {
    let problems = triggers::capture_problems(None);
    if problems.is_empty() {
        check(
            "triggers",
            "OK",
            "every source table has its capture triggers",
        )
    } else {
        let mut entities: Vec<&str> = problems.iter().map(|(e, _)| e.as_str()).collect();
        entities.dedup();
        let repair = match entities.as_slice() {
            [one] => format!("SELECT pg_tviews_repair('{one}');"),
            _ => "SELECT pg_tviews_repair();".to_string(),
        };
        check(
            "triggers",
            "CRITICAL",
            format!(
                "capture broken, those TVIEWs go stale: {}; run {repair}",
                problems
                    .iter()
                    .map(|(e, p)| format!("{e}: {p}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        )
    }
}

fn orphaned_triggers() -> Check {
    let orphaned = triggers::orphans();
    let orphaned = (!orphaned.is_empty()).then(|| orphaned.join(", "));
    match orphaned {
        Some(o) => check(
            "orphaned_triggers",
            "WARNING",
            format!("triggers of no TVIEW: {o}; SELECT pg_tviews_repair(); re-adopts a TVIEW whose metadata was lost, or removes them"),
        ),
        None => check("orphaned_triggers", "OK", "none"),
    }
}

/// Keys that gave up (a join that became one-to-many, a read-only database, a bug in a
/// definition): their TVIEW rows are stale until someone acts, so this is critical.
fn dead_letters() -> Check {
    let dead = Spi::get_one::<String>(
        "SELECT string_agg(format('%s: %s key(s), SQLSTATE %s: %s', m.entity, d.n, d.sqlstate, d.last_error), '; ' ORDER BY m.entity) \
         FROM (SELECT tview_oid, count(*) AS n, max(sqlstate) AS sqlstate, max(last_error) AS last_error \
               FROM pg_tview_deferred WHERE reason = 'dead' GROUP BY tview_oid) d \
         JOIN pg_tview_meta m ON m.table_oid = d.tview_oid",
    )
    .ok()
    .flatten();
    match dead {
        Some(d) => check(
            "dead_letters",
            "CRITICAL",
            format!("refreshes that gave up, those rows are stale: {d}; fix the cause, then SELECT pg_tviews_retry_failed();"),
        ),
        None => check("dead_letters", "OK", "none"),
    }
}

/// Only when new sessions of a database with TVIEWs are read-only: the worker's refreshes
/// honour it and fail (25006), so every change is stale until it is writable again.
fn read_only(ctx: &Context) -> Option<Check> {
    (ctx.tview_count > 0 && catalog::database_read_only()).then(|| {
        check(
            "read_only",
            "CRITICAL",
            "new sessions of this database are read-only (default_transaction_read_only = on): the worker does not write TVIEW rows, their keys are retried and then dead-lettered with SQLSTATE 25006; make the database writable (ALTER DATABASE ... RESET default_transaction_read_only), then SELECT pg_tviews_retry_failed();",
        )
    })
}

/// Keys set aside because their TVIEW (or a source) was locked: which TVIEW, and who holds a
/// lock on it now (the other TVIEWs keep flowing meanwhile).
fn blocked() -> Check {
    let blocked = Spi::get_one::<String>(
        "SELECT string_agg(format('%s: %s key(s) waiting for a lock (%s)', m.entity, d.n, \
                    coalesce((SELECT string_agg(h.holder, ', ' ORDER BY h.pid) FROM ( \
                                SELECT l.pid, format('%s held by pid %s', l.mode, l.pid) AS holder \
                                FROM pg_locks l WHERE l.granted AND l.locktype = 'relation' \
                                  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                                  AND l.relation IN (SELECT m.table_oid UNION SELECT unnest(m.dependencies)) \
                                  AND l.mode IN ('AccessExclusiveLock', 'ExclusiveLock', 'ShareRowExclusiveLock', 'ShareLock', 'RowShareLock') \
                                  AND l.pid <> pg_backend_pid() \
                                UNION ALL \
                                SELECT l.pid, format('a sync-mode writer''s transaction, pid %s', l.pid) \
                                FROM pg_locks l WHERE l.granted AND l.locktype = 'advisory' \
                                  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                                  AND l.classid = m.table_oid::oid AND l.objsubid = 4 AND l.mode = 'RowExclusiveLock' \
                                  AND l.pid <> pg_backend_pid()) h), \
                             'no table lock now; row locks, or released')), \
                    '; ' ORDER BY m.entity) \
         FROM (SELECT tview_oid, count(*) AS n FROM pg_tview_deferred \
               WHERE reason = 'failed' AND sqlstate = '55P03' GROUP BY tview_oid) d \
         JOIN pg_tview_meta m ON m.table_oid = d.tview_oid",
    )
    .ok()
    .flatten();
    match blocked {
        Some(b) => check(
            "blocked",
            "WARNING",
            format!("{b}; retried every second, other TVIEWs are not held up (pg_tviews_bgw.lock_timeout)"),
        ),
        None => check("blocked", "OK", "no TVIEW waits for a lock"),
    }
}

/// TVIEWs with reads no trigger captures (opt-in): fresh only up to their reconcile interval;
/// critical when the worker has not reconciled them for twice that.
fn uncaptured() -> Check {
    let uncaptured = Spi::get_one_with_args::<Vec<String>>(
        "SELECT array[coalesce(string_agg(format('%s (every %s)', entity, reconcile_interval), ', ') \
                        FILTER (WHERE NOT overdue), ''), \
                      coalesce(string_agg(format('%s (last %s)', entity, last_reconciled_at), ', ') \
                        FILTER (WHERE overdue), '')] \
         FROM (SELECT entity, reconcile_interval, last_reconciled_at, \
                      coalesce(last_reconciled_at, created_at) + 2 * reconcile_interval + interval '1 minute' < now() AS overdue \
               FROM pg_tview_meta WHERE reconcile_interval IS NOT NULL AND NOT paused) r",
        &[],
    )
    .ok()
    .flatten()
    .unwrap_or_default();
    let (fresh, overdue) = (
        uncaptured.first().cloned().unwrap_or_default(),
        uncaptured.get(1).cloned().unwrap_or_default(),
    );
    if !overdue.is_empty() {
        check(
            "uncaptured",
            "CRITICAL",
            format!("TVIEWs with uncaptured reads not reconciled for over twice their interval: {overdue}; check the worker (pg_tviews_worker_status) and pg_tviews_dead_letters"),
        )
    } else if !fresh.is_empty() {
        check(
            "uncaptured",
            "WARNING",
            format!("TVIEWs reading what no trigger captures, fresh only up to their reconcile interval: {fresh}; see pg_tviews_explain()"),
        )
    } else {
        check("uncaptured", "OK", "every read of every TVIEW is captured")
    }
}

fn metadata(ctx: &Context) -> Check {
    let broken = catalog::unmaintained_tviews();
    match broken {
        Some(b) => check(
            "metadata",
            "CRITICAL",
            format!("pg_tview_meta rows whose table or view is gone or is another relation (damaged, or restored from a dump of 0.3.0 or older): {b}; run SELECT pg_tviews_repair();"),
        ),
        None => check("metadata", "OK", format!("{} TVIEWs", ctx.tview_count)),
    }
}

/// The background scrub's finding: WARNING naming every TVIEW whose last pass (or the pass in
/// progress) repaired drifted rows; `None` on a schema without the scrub's columns.
fn drift() -> Option<Check> {
    if !catalog::meta_has_column("last_pass_drift") {
        return None;
    }
    let Some(interval) = gucs::scrub_interval() else {
        return Some(check(
            "drift",
            "OK",
            "scrub off (pg_tviews_bgw.scrub_interval = 0): drift is not looked for",
        ));
    };
    let (drifted, oldest) = Spi::get_two::<String, String>(
        "SELECT string_agg(format('tv_%s: %s row(s) repaired in all, last at %s', entity, coalesce(drift_repaired, 0), \
                    date_trunc('second', last_drift_at)), '; ' ORDER BY entity) \
                    FILTER (WHERE coalesce(last_pass_drift, 0) > 0 OR last_drift_at > coalesce(last_scrubbed_at, '-infinity')), \
                (SELECT CASE WHEN bool_and(last_scrubbed_at IS NOT NULL) THEN 'every TVIEW scrubbed since ' \
                              || date_trunc('second', min(last_scrubbed_at))::text \
                              ELSE 'first pass not complete yet' END FROM pg_tview_meta) \
         FROM pg_tview_meta",
    )
    .unwrap_or((None, None));
    let first = drifted
        .as_deref()
        .and_then(|d| d.split(':').next())
        .unwrap_or("tv_x")
        .to_string();
    Some(match drifted {
        Some(d) => check(
            "drift",
            "WARNING",
            format!(
                "the background scrub repaired rows that differed from their query although every committed change was applied (a capture gap, or a write behind the extension's back): {d}; find the uncaptured path with SELECT * FROM pg_tviews_explain('{first}'), then check the whole TVIEW with SELECT pg_tviews_repair('{first}'); the WARNING clears after a clean pass"
            ),
        ),
        None => check(
            "drift",
            "OK",
            format!(
                "no drift in the last scrub pass (one pass every {} s; {})",
                interval.as_secs(),
                oldest.unwrap_or_default()
            ),
        ),
    })
}

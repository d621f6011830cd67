//! Every `pg_tviews_bgw.*` setting, defined once at preload; read by user backends and workers.
//!
//! Postmaster settings size shared memory, so they are fixed for the life of the server.
//! Sighup settings are re-read by workers after their own `ProcessConfigFile` call.
//!
//! The `GucSetting` statics are private: code reads a setting through its typed accessor at the
//! end of this file, which also clamps or converts it where the value needs it (one place, not
//! every call site). Adding a setting: CONTRIBUTING.md.

use std::time::Duration;

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};

use crate::limits::MAX_PARTITIONS;

/// Where a session's changes to tracked tables are refreshed.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum RefreshMode {
    /// Keys are queued at COMMIT and refreshed by the database's worker (the default).
    #[name = c"async"]
    Async,
    /// Rows are refreshed inside the writing statement (read-your-writes, migrations, tests).
    #[name = c"sync"]
    Sync,
}

/// How committed keys survive a crash or restart (shared memory does not).
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum Durability {
    /// Each committing transaction also appends its keys to a WAL-logged journal table, which
    /// is replayed after a restart, a crash or a queue overflow (the default).
    #[name = c"journal"]
    Journal,
    /// Shared memory only: after a restart, crash or overflow every TVIEW of the database is
    /// reconciled with its defining query (recompute and diff).
    #[name = c"none"]
    None,
}

/// Crash and restart safety of queued keys; fixed for the life of the server.
static DURABILITY: GucSetting<Durability> = GucSetting::<Durability>::new(Durability::Journal);

/// Drainers (and rings) per database; keys are partitioned among them by (TVIEW, key).
static WORKERS_PER_DATABASE: GucSetting<i32> = GucSetting::<i32>::new(1);

/// How long writers append to one journal table before the worker rotates to the next (ms).
static JOURNAL_ROTATE_MS: GucSetting<i32> = GucSetting::<i32>::new(5_000);

/// `pg_tviews_health_check()` warns when a database has more keys than this pending.
static HEALTH_QUEUE_DEPTH: GucSetting<i32> = GucSetting::<i32>::new(1_000);

/// `pg_tviews_health_check()` warns when the oldest pending key is older than this (ms).
static HEALTH_LAG_MS: GucSetting<i32> = GucSetting::<i32>::new(5_000);

/// `pg_tviews_health_check()` warns when the journal tables are larger than this (MB).
static HEALTH_JOURNAL_MB: GucSetting<i32> = GucSetting::<i32>::new(1_024);

/// Per-session choice between background and in-statement refresh.
static MODE: GucSetting<RefreshMode> = GucSetting::<RefreshMode>::new(RefreshMode::Async);

/// Master switch for draining. Off: keys keep being captured and queued (nothing is lost),
/// but workers stop refreshing until it is turned back on.
static ENABLED: GucSetting<bool> = GucSetting::<bool>::new(true);

/// Capacity, in keys, of each worker's ring. A transaction whose keys do not fit degrades to a
/// full refresh of that database's TVIEWs instead of blocking or dropping anything.
static QUEUE_SIZE: GucSetting<i32> = GucSetting::<i32>::new(65_536);

/// Number of drainer slots (and rings) in shared memory: one per database with the extension.
static MAX_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(4);

/// Maximum keys a drainer takes from its ring per refresh transaction.
static BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(1_000);

/// How long an idle drainer sleeps before re-checking on its own (publishes wake it at once).
static NAPTIME_MS: GucSetting<i32> = GucSetting::<i32>::new(1_000);

/// Keys a database's worker may refresh per second (token bucket; 0 = unlimited).
static MAX_ROWS_PER_SECOND: GucSetting<i32> = GucSetting::<i32>::new(0);

/// When the queue holds less than a batch, wait up to this long (ms) after the oldest key's
/// commit for more keys (0 = take them at once).
static COALESCE_MS: GucSetting<i32> = GucSetting::<i32>::new(0);

/// Time budget of one refresh transaction (ms): slower batches halve the next batch's size,
/// quick ones double it back up to batch_size (0 = off).
static MAX_BATCH_MS: GucSetting<i32> = GucSetting::<i32>::new(0);

/// Time budget (ms) of the leader's ring batches while write tokens are being waited for (one
/// was served in the last 10 s): a token's keys wait for at most one such batch (0 = do not
/// shrink batches for tokens).
static TOKEN_BATCH_MS: GucSetting<i32> = GucSetting::<i32>::new(2);

/// Failed refresh attempts of a key before it becomes a dead letter.
static MAX_RETRIES: GucSetting<i32> = GucSetting::<i32>::new(5);

/// How long (ms) a worker's refresh of one TVIEW waits for a lock (a `LOCK TABLE`, a `SELECT
/// ... FOR UPDATE` on its rows, DDL on a source) before it sets those keys aside and moves on
/// to the other TVIEWs (0 = wait as long as it takes).
static LOCK_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(200);

/// Target time (s) for one scrub pass over every TVIEW of a database (0 = no scrub). One day:
/// a capture gap (drift) lasts at most a day, and the pace it needs is tiny (a million rows a
/// day are 12 rows per second), so it costs nothing measurable by default.
static SCRUB_INTERVAL_S: GucSetting<i32> = GucSetting::<i32>::new(86_400);

/// Most TVIEW rows the scrub compares per second (0 = no cap). It runs only when the leader has
/// nothing to drain; the cap bounds what it takes from the server even then.
static SCRUB_ROWS_PER_SECOND: GucSetting<i32> = GucSetting::<i32>::new(1_000);

const QUEUE_SIZE_MIN: i32 = 16;
const QUEUE_SIZE_MAX: i32 = 16 * 1024 * 1024;
const MAX_WORKERS_MAX: i32 = 64;

/// Settings that may be defined after start-up; also defined when the library is loaded without
/// shared_preload_libraries (where sync is the only mode that works).
pub fn define_session() {
    GucRegistry::define_enum_guc(
        c"pg_tviews_bgw.mode",
        c"Refresh TVIEWs in the background (async) or inside each writing statement (sync).",
        c"sync gives read-your-writes at the cost of write latency; without shared_preload_libraries every session behaves as sync.",
        &MODE,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_tviews_bgw.health_queue_depth",
        c"Pending keys above which pg_tviews_health_check() reports WARNING.",
        c"",
        &HEALTH_QUEUE_DEPTH,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_tviews_bgw.health_journal_size",
        c"Size of the journal tables above which pg_tviews_health_check() reports WARNING.",
        c"",
        &HEALTH_JOURNAL_MB,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_MB,
    );
    GucRegistry::define_int_guc(
        c"pg_tviews_bgw.health_lag",
        c"Age of the oldest pending key above which pg_tviews_health_check() reports WARNING.",
        c"",
        &HEALTH_LAG_MS,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
}

pub fn define() {
    define_session();
    GucRegistry::define_bool_guc(
        c"pg_tviews_bgw.enabled",
        c"Whether background workers refresh TVIEWs.",
        c"When off, changed keys are still captured and queued; workers stop draining until it is on again.",
        &ENABLED,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_tviews_bgw.queue_size",
        c"Capacity of each worker's shared-memory key ring, in keys.",
        c"A committing transaction whose keys do not fit makes the worker fully refresh its database's TVIEWs.",
        &QUEUE_SIZE,
        QUEUE_SIZE_MIN,
        QUEUE_SIZE_MAX,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_tviews_bgw.max_workers",
        c"Number of drainer slots (and rings) in shared memory, across all databases.",
        c"A database using the extension takes workers_per_database of them; each drainer is a dynamic background worker and also needs a max_worker_processes slot.",
        &MAX_WORKERS,
        1,
        MAX_WORKERS_MAX,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"pg_tviews_bgw.durability",
        c"How queued TVIEW keys survive a crash or restart: journal (replayed) or none (full reconcile).",
        c"journal writes one WAL-logged row per committing transaction; none keeps keys in shared memory only and recomputes every TVIEW after a crash, restart or queue overflow.",
        &DURABILITY,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_tviews_bgw.workers_per_database",
        c"Background workers (each with its own ring) draining one database in parallel.",
        c"Keys are partitioned by (TVIEW, key), so each TVIEW row has one refresher. Each worker takes a max_workers slot and a max_worker_processes slot.",
        &WORKERS_PER_DATABASE,
        1,
        MAX_PARTITIONS as i32,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_tviews_bgw.batch_size",
        c"Maximum number of queued keys refreshed in one worker transaction.",
        c"",
        &BATCH_SIZE,
        1,
        1_000_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_tviews_bgw.max_rows_per_second",
        c"Maximum TVIEW keys a database's worker refreshes per second (0 = unlimited).",
        c"A token bucket with a one-second burst; lowers the refresh load on a busy primary at the cost of lag.",
        &MAX_ROWS_PER_SECOND,
        0,
        100_000_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_tviews_bgw.coalesce_ms",
        c"Wait up to this long after a key's commit for a fuller batch when the queue is shallow.",
        c"Trades a little lag for fewer, larger refresh transactions under a steady trickle of writes.",
        &COALESCE_MS,
        0,
        60_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pg_tviews_bgw.max_batch_ms",
        c"Time budget of one refresh transaction; slower batches are split.",
        c"Keeps row locks on TVIEW rows short; 0 disables the budget.",
        &MAX_BATCH_MS,
        0,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pg_tviews_bgw.token_batch_ms",
        c"Time budget of the leader's queue batches while write tokens are waited for (0 = off).",
        c"Short batches let the priority lane start within that time of a token's commit, at some cost in drain throughput while tokens are in use.",
        &TOKEN_BATCH_MS,
        0,
        60_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pg_tviews_bgw.max_retries",
        c"Failed refresh attempts of a key before it is parked as a dead letter.",
        c"Retries back off exponentially (1 s, 2 s, 4 s, ... up to 5 min); pg_tviews_retry_failed() revives dead letters.",
        &MAX_RETRIES,
        1,
        1_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_tviews_bgw.lock_timeout",
        c"How long a worker's refresh of one TVIEW waits for a lock before it sets the keys aside (ms).",
        c"Keys that waited are retried every second without counting as failed attempts, so one locked TVIEW never stalls the others; 0 waits without limit.",
        &LOCK_TIMEOUT_MS,
        0,
        600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pg_tviews_bgw.journal_rotate_interval",
        c"How long writers append to one journal table before the worker switches them to the next.",
        c"A table is truncated once every key in it is applied; shorter intervals keep the journal smaller.",
        &JOURNAL_ROTATE_MS,
        10,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pg_tviews_bgw.naptime",
        c"How long an idle worker sleeps between checks when nothing wakes it.",
        c"Commits wake the worker immediately; this bounds how fast it notices DROP EXTENSION or a setting change.",
        &NAPTIME_MS,
        10,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pg_tviews_bgw.scrub_interval",
        c"Target time for one background scrub (anti-entropy) pass over every TVIEW; 0 disables it.",
        c"The leader compares TVIEW rows with their query in small key ranges when it has nothing to drain, repairs rows that differ although every committed change was applied (drift), and counts them. The default, 1 day, bounds how long a capture gap lasts at a negligible pace; never faster than scrub_rows_per_second.",
        &SCRUB_INTERVAL_S,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"pg_tviews_bgw.scrub_rows_per_second",
        c"Most TVIEW rows the background scrub compares per second (0 = no cap).",
        c"The scrub runs only while the leader worker has no keys to drain, one short transaction of at most batch_size rows per step; this caps its load even then. When the cap makes scrub_interval impossible the pass takes longer and the server log says so.",
        &SCRUB_ROWS_PER_SECOND,
        0,
        100_000_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    // SAFETY: called from _PG_init in the postmaster; the prefix string is static.
    unsafe { pgrx::pg_sys::MarkGUCPrefixReserved(c"pg_tviews_bgw".as_ptr()) };
}

// Typed accessors, one per setting. PostgreSQL already keeps every value within the bounds
// given to `define_*_guc`; the clamps below restate the bounds a caller relies on (a negative
// count cast to an unsigned type, a zero divisor), so they hold even if a bound is changed.

/// `mode`: this session's refresh mode.
pub fn mode() -> RefreshMode {
    MODE.get()
}

/// `enabled`: whether workers drain their rings.
pub fn enabled() -> bool {
    ENABLED.get()
}

/// `durability` (postmaster).
pub fn durability() -> Durability {
    DURABILITY.get()
}

/// `queue_size` (postmaster): capacity of each ring, in keys.
pub fn queue_size() -> usize {
    QUEUE_SIZE.get().clamp(QUEUE_SIZE_MIN, QUEUE_SIZE_MAX) as usize
}

/// `max_workers` (postmaster): slots (and rings) in shared memory.
pub fn max_workers() -> usize {
    MAX_WORKERS.get().clamp(1, MAX_WORKERS_MAX) as usize
}

/// `workers_per_database` (postmaster): partitions of one database, 1 ..= `MAX_PARTITIONS`.
pub fn workers_per_database() -> usize {
    (WORKERS_PER_DATABASE.get().max(1) as usize).min(MAX_PARTITIONS)
}

/// `batch_size`: most keys per refresh transaction, at least 1.
pub fn batch_size() -> usize {
    BATCH_SIZE.get().max(1) as usize
}

/// `naptime`: an idle drainer's sleep, at least 10 ms.
pub fn naptime() -> Duration {
    Duration::from_millis(NAPTIME_MS.get().max(10) as u64)
}

/// `max_rows_per_second` of a whole database (0 = unlimited).
pub fn max_rows_per_second() -> u64 {
    MAX_ROWS_PER_SECOND.get().max(0) as u64
}

/// `coalesce_ms`, in microseconds (0 = take a shallow queue at once).
pub fn coalesce_us() -> i64 {
    i64::from(COALESCE_MS.get().max(0)) * 1000
}

/// `max_batch_ms`: a refresh transaction's time budget (0 = off).
pub fn max_batch_ms() -> u64 {
    MAX_BATCH_MS.get().max(0) as u64
}

/// `token_batch_ms`: ring batch budget while tokens are in use; None when off.
pub fn token_batch_ms() -> Option<u64> {
    let ms = TOKEN_BATCH_MS.get();
    (ms > 0).then_some(ms as u64)
}

/// `max_retries`: failed attempts before a key becomes a dead letter, at least 1.
pub fn max_retries() -> i32 {
    MAX_RETRIES.get().max(1)
}

/// `lock_timeout` of a worker's refresh of one TVIEW, in ms (0 = wait without limit).
pub fn lock_timeout_ms() -> i32 {
    LOCK_TIMEOUT_MS.get().max(0)
}

/// `journal_rotate_interval`, in microseconds.
pub fn journal_rotate_interval_us() -> i64 {
    i64::from(JOURNAL_ROTATE_MS.get().max(10)) * 1000
}

/// `health_queue_depth`: pending keys above which the health check warns.
pub fn health_queue_depth() -> u64 {
    HEALTH_QUEUE_DEPTH.get().max(0) as u64
}

/// `health_lag`, in ms: age of the oldest pending key above which the health check warns.
pub fn health_lag_ms() -> i64 {
    i64::from(HEALTH_LAG_MS.get().max(0))
}

/// `health_journal_size`, in MB: journal size above which the health check warns.
pub fn health_journal_mb() -> i64 {
    i64::from(HEALTH_JOURNAL_MB.get().max(0))
}

/// `scrub_interval`; `None` when the scrub is off.
pub fn scrub_interval() -> Option<Duration> {
    let s = SCRUB_INTERVAL_S.get();
    (s > 0).then(|| Duration::from_secs(s as u64))
}

/// `scrub_rows_per_second` (0 = no cap).
pub fn scrub_rows_per_second() -> u64 {
    SCRUB_ROWS_PER_SECOND.get().max(0) as u64
}

//! The launcher: one static background worker, connected to no database. It finds databases
//! that have the extension and keeps one drainer registered per served database.
//! State machine: ARCHITECTURE.md "Launcher loop".

use super::drainer::registration_extra;
use super::{exit_requested, reload_config_if_asked, run_in_transaction};
use crate::queue::slots;
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, DynamicBackgroundWorker,
    SignalWakeFlags,
};
use pgrx::prelude::*;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

pub const LIBRARY: &str = "pg_tviews_bgw";
pub const LAUNCHER_TYPE: &str = "pg_tviews_bgw launcher";
pub const WORKER_TYPE: &str = "pg_tviews_bgw worker";

/// How often pg_database is re-read to discover new databases.
const SCAN_INTERVAL: Duration = Duration::from_secs(2);
/// How long the launcher sleeps when nothing wakes it.
const TICK: Duration = Duration::from_millis(500);
/// Backoff between attempts to register drainers while max_worker_processes is exhausted.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Registers the launcher; only from `_PG_init` during shared_preload_libraries.
pub fn register() {
    BackgroundWorkerBuilder::new(LAUNCHER_TYPE)
        .set_type(LAUNCHER_TYPE)
        .set_library(LIBRARY)
        .set_function("pg_tviews_bgw_launcher_main")
        .enable_shmem_access(None)
        // A database connection (to no database) lets it read the shared catalog pg_database.
        .enable_spi_access()
        // Not before recovery ends: nothing to do on a standby (invariant 6).
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

#[derive(Clone, Copy)]
struct DatabaseRow {
    oid: u32,
    connectable: bool,
}

#[pg_guard]
// SAFETY: no other symbol of the process has this name; the postmaster looks the entry
// point up by it (`bgw_function_name`).
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_tviews_bgw_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    super::reload_config_at_start();
    // No database: only shared catalogs (pg_database) are readable, which is all we need.
    BackgroundWorker::connect_worker_to_spi(None, None);
    // SAFETY: MyProcPid and MyLatch are valid in a background worker.
    unsafe { slots::launcher_attach(pg_sys::MyProcPid, pg_sys::MyLatch) };
    // SAFETY: registering a static callback.
    unsafe { pg_sys::before_shmem_exit(Some(on_exit), pg_sys::Datum::from(0usize)) };
    log!("pg_tviews_bgw launcher started");

    let mut launcher = Launcher::default();
    loop {
        if exit_requested() {
            exit(1);
        }
        reload_config_if_asked();
        launcher.tick();
        if !BackgroundWorker::wait_latch(Some(TICK)) {
            exit(1);
        }
    }
}

/// # Safety
/// Registered with `before_shmem_exit`; PostgreSQL calls it once at process exit, while
/// shared memory is still attached.
#[pg_guard]
unsafe extern "C-unwind" fn on_exit(_code: i32, _arg: pg_sys::Datum) {
    slots::launcher_detach();
}

fn exit(code: i32) -> ! {
    crate::pg::proc_exit(code)
}

struct Launcher {
    /// Databases already checked for the extension since the launcher started. A database
    /// where the extension is created later announces itself (CREATE EXTENSION claims a slot).
    probed: HashSet<u32>,
    /// Workers we registered, by slot, so we can terminate one whose database vanished.
    handles: HashMap<usize, (u32, DynamicBackgroundWorker)>,
    next_scan: Option<Instant>,
    warned_no_slot: bool,
    /// When to try registering drainers again after `max_worker_processes` was exhausted.
    retry_at: Instant,
    retry_delay: Duration,
}

impl Default for Launcher {
    fn default() -> Launcher {
        Launcher {
            probed: HashSet::new(),
            handles: HashMap::new(),
            next_scan: None,
            warned_no_slot: false,
            retry_at: Instant::now(),
            retry_delay: RETRY_MIN,
        }
    }
}

impl Launcher {
    fn tick(&mut self) {
        if self.next_scan.is_none_or(|t| Instant::now() >= t) {
            self.next_scan = Some(Instant::now() + SCAN_INTERVAL);
            match run_in_transaction(scan_databases) {
                Ok(databases) => self.reconcile(&databases),
                Err(message) => {
                    warning!("pg_tviews_bgw launcher could not read pg_database: {message}")
                }
            }
        }
        self.start_missing_workers();
    }

    fn reconcile(&mut self, databases: &[DatabaseRow]) {
        let exists: HashMap<u32, bool> = databases.iter().map(|d| (d.oid, d.connectable)).collect();
        for dboid in slots::served_databases() {
            if exists.get(&dboid) != Some(&true) {
                // Dropped (or made unconnectable) behind our back: stop its workers for good.
                let gone: Vec<usize> = self
                    .handles
                    .iter()
                    .filter(|(_, (oid, _))| *oid == dboid)
                    .map(|(&slot, _)| slot)
                    .collect();
                for slot in gone {
                    if let Some((_, handle)) = self.handles.remove(&slot) {
                        let _ = handle.terminate();
                    }
                }
                slots::free_group(dboid);
                self.probed.remove(&dboid);
            }
        }
        self.probed.retain(|oid| exists.contains_key(oid));
        for db in databases.iter().filter(|d| d.connectable) {
            if self.probed.contains(&db.oid) {
                continue;
            }
            if slots::served_databases().contains(&db.oid) {
                self.probed.insert(db.oid);
                continue;
            }
            match slots::claim_probe(db.oid) {
                Some(_) => {
                    self.probed.insert(db.oid);
                }
                None => {
                    if !self.warned_no_slot {
                        log!("pg_tviews_bgw launcher: all worker slots busy (pg_tviews_bgw.max_workers); will check database {} later", db.oid);
                        self.warned_no_slot = true;
                    }
                    break;
                }
            }
        }
    }

    fn start_missing_workers(&mut self) {
        if Instant::now() < self.retry_at {
            return;
        }
        for unstarted in slots::slots_without_worker() {
            let slots::Unstarted {
                slot,
                dboid,
                generation,
                partition,
            } = unstarted;
            // SAFETY: MyProcPid is valid in a background worker.
            let notify_pid = unsafe { pg_sys::MyProcPid };
            let registration =
                BackgroundWorkerBuilder::new(&format!("{WORKER_TYPE} {dboid}/{partition}"))
                    .set_type(WORKER_TYPE)
                    .set_library(LIBRARY)
                    .set_function("pg_tviews_bgw_drainer_main")
                    .set_argument(pg_sys::Oid::from(dboid).into_datum())
                    .set_extra(&registration_extra(slot, generation))
                    .enable_spi_access()
                    .set_restart_time(Some(Duration::from_secs(1)))
                    .set_notify_pid(notify_pid)
                    .load_dynamic();
            match registration {
                Ok(handle) => {
                    slots::mark_worker_registered(slot, generation);
                    self.handles.insert(slot, (dboid, handle));
                    // A database we start a drainer for needs no probe later: if its extension
                    // is dropped before our next scan sees it served, a probe would only find
                    // it gone (and show a stray worker); re-creating it claims a slot again.
                    self.probed.insert(dboid);
                    self.warned_no_slot = false;
                    self.retry_delay = RETRY_MIN;
                }
                Err(_) => {
                    let message =
                        "no free background worker slot; raise max_worker_processes (retrying)";
                    slots::note_unstarted(slot, generation, message);
                    if !self.warned_no_slot {
                        warning!(
                            "pg_tviews_bgw launcher could not start a worker for database {dboid}: {message}"
                        );
                        self.warned_no_slot = true;
                    }
                    // Back off (0.5 s doubling to 30 s) instead of hammering the postmaster.
                    self.retry_at = Instant::now() + self.retry_delay;
                    self.retry_delay = (self.retry_delay * 2).min(RETRY_MAX);
                    return;
                }
            }
        }
    }
}

/// Reads pg_database with a catalog heap scan (the launcher has no database connection).
fn scan_databases() -> Vec<DatabaseRow> {
    let mut out = Vec::new();
    // SAFETY: inside a transaction; pg_database is a shared catalog readable without a database
    // connection; the scan and the relation are closed before returning.
    unsafe {
        let rel = pg_sys::table_open(
            pg_sys::DatabaseRelationId,
            pg_sys::AccessShareLock as pg_sys::LOCKMODE,
        );
        let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
        loop {
            let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            let form = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tuple);
            out.push(DatabaseRow {
                oid: (*form).oid.to_u32(),
                connectable: (*form).datallowconn && !(*form).datistemplate,
            });
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
    }
    out
}

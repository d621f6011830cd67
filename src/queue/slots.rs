//! Slot life cycle: the launcher claims and frees slot groups, drainers attach to and detach
//! from their slot. Runs in the launcher and in drainers; short LWLock holds, never raises.
//! State machine: ARCHITECTURE.md "Slot life cycle".

use super::shmem::{self, WorkerState};
use super::{claim_group, collect_claimed, find_leader, leader_probing, now, wake};
use crate::gucs;
use pgrx::pg_sys;

pub fn launcher_attach(pid: i32, latch: *mut pg_sys::Latch) {
    if let Some(mut q) = shmem::lock_exclusive() {
        q.header().launcher_pid = pid;
        q.header().launcher_latch = latch;
    }
}

pub fn launcher_detach() {
    if let Some(mut q) = shmem::lock_exclusive() {
        q.header().launcher_pid = 0;
        q.header().launcher_latch = std::ptr::null_mut();
    }
}

/// A slot the launcher must register a drainer for.
#[derive(Clone, Copy, Debug)]
pub struct Unstarted {
    pub slot: usize,
    pub dboid: u32,
    pub generation: u64,
    pub partition: u32,
}

/// Claimed slots without a registered drainer. Partitions other than 0 wait until the leader
/// confirmed that the database really has the extension.
pub fn slots_without_worker() -> Vec<Unstarted> {
    collect_claimed(|q, i, slot| {
        let waiting = slot.worker_registered
            || slot.stop_requested
            || (slot.partition != 0 && leader_probing(q, slot.dboid));
        (!waiting).then_some(Unstarted {
            slot: i,
            dboid: slot.dboid,
            generation: slot.generation,
            partition: slot.partition,
        })
    })
}

/// Databases that own a slot group.
pub fn served_databases() -> Vec<u32> {
    collect_claimed(|_, _, slot| (slot.partition == 0).then_some(slot.dboid))
}

pub fn mark_worker_registered(slot: usize, generation: u64) {
    if let Some(mut q) = shmem::lock_exclusive() {
        let s = q.slot(slot);
        if !s.is_free() && s.generation == generation {
            s.worker_registered = true;
        }
    }
}

/// The launcher could not register a drainer (no free `max_worker_processes` slot): shown in
/// `pg_tviews_worker_status` until it succeeds.
pub fn note_unstarted(slot: usize, generation: u64, message: &str) {
    if let Some(mut q) = shmem::lock_exclusive() {
        let at = now();
        let s = q.slot(slot);
        if !s.is_free() && s.generation == generation {
            s.set_last_error(message, at);
        }
    }
}

/// Claims a slot group only to learn whether `dboid` has the extension; `None` when it
/// already has one or none is free.
pub fn claim_probe(dboid: u32) -> Option<usize> {
    let mut q = shmem::lock_exclusive()?;
    if find_leader(&mut q, dboid).is_some() {
        return None;
    }
    claim_group(&mut q, dboid, gucs::workers_per_database(), true)
}

/// Releases every slot of `dboid` (database gone, extension dropped, probe negative).
pub fn free_group(dboid: u32) {
    if let Some(mut q) = shmem::lock_exclusive() {
        for i in 0..q.max_workers() {
            if q.slot(i).dboid == dboid {
                q.slot(i).release();
            }
        }
    }
}

/// Asks the drainers of `dboid` to leave for good; returns whether one was running.
pub fn request_stop(dboid: u32) -> bool {
    let Some(mut q) = shmem::lock_exclusive() else {
        return false;
    };
    let mut latches = Vec::new();
    for i in 0..q.max_workers() {
        let slot = q.slot(i);
        if slot.dboid == dboid {
            slot.stop_requested = true;
            if slot.pid != 0 {
                latches.push(slot.latch);
            }
        }
    }
    drop(q);
    let running = !latches.is_empty();
    for latch in latches {
        wake(latch);
    }
    running
}

/// Whether any drainer is still attached to `dboid`.
pub fn drainer_running(dboid: u32) -> bool {
    let Some(mut q) = shmem::lock_exclusive() else {
        return false;
    };
    (0..q.max_workers()).any(|i| {
        let s = q.slot(i);
        s.dboid == dboid && s.pid != 0
    })
}

/// What a drainer learns when it attaches.
pub enum Attach {
    Attached {
        /// The leader must first check that the extension exists.
        probing: bool,
        partition: u32,
        partitions: u32,
    },
    /// The slot was reassigned, freed or taken: this registration is stale and must end.
    Stale,
}

pub fn drainer_attach(
    slot: usize,
    dboid: u32,
    generation: u64,
    pid: i32,
    latch: *mut pg_sys::Latch,
) -> Attach {
    let Some(mut q) = shmem::lock_exclusive() else {
        return Attach::Stale;
    };
    if slot >= q.max_workers() {
        return Attach::Stale;
    }
    let at = now();
    let s = q.slot(slot);
    if s.dboid != dboid || s.generation != generation || s.stop_requested || s.pid != 0 {
        return Attach::Stale;
    }
    // A claimed slot without a pid is Starting (claim and detach set both), so this holds.
    if s.transition(WorkerState::Idle).is_err() {
        return Attach::Stale;
    }
    s.pid = pid;
    s.latch = latch;
    s.worker_registered = true;
    s.started_at = at;
    s.last_activity = at;
    s.last_error_len = 0;
    Attach::Attached {
        probing: s.probing,
        partition: s.partition,
        partitions: s.partitions,
    }
}

/// The leader found no extension: frees the group only if it is still a probe. `false` when
/// someone claimed it for real meanwhile (CREATE EXTENSION committed), so the worker stays.
pub fn release_if_probing(slot: usize, dboid: u32, generation: u64) -> bool {
    let Some(mut q) = shmem::lock_exclusive() else {
        return true;
    };
    let s = q.slot(slot);
    if s.dboid != dboid || s.generation != generation {
        return true;
    }
    if !s.probing {
        return false;
    }
    drop(q);
    free_group(dboid);
    true
}

/// The leader found the extension installed: the group is real; the launcher starts the
/// other partitions' drainers.
pub fn drainer_confirm(slot: usize, dboid: u32, generation: u64) {
    let Some(mut q) = shmem::lock_exclusive() else {
        return;
    };
    let s = q.slot(slot);
    if s.dboid == dboid && s.generation == generation && s.probing {
        s.probing = false;
        let launcher = q.header().launcher_latch;
        drop(q);
        wake(launcher);
    }
}

/// On the way out of a drainer. With `release`, the whole group is freed (extension dropped,
/// database dropped); otherwise the slot stays claimed, with its keys, for the restarted worker.
pub fn drainer_detach(slot: usize, dboid: u32, generation: u64, release: bool) {
    let Some(mut q) = shmem::lock_exclusive() else {
        return;
    };
    if slot >= q.max_workers() {
        return;
    }
    let s = q.slot(slot);
    if s.dboid != dboid || s.generation != generation {
        return;
    }
    if release {
        drop(q);
        free_group(dboid);
        return;
    }
    s.pid = 0;
    s.latch = std::ptr::null_mut();
    // Starting may follow every state but Free, and this slot is claimed (dboid matched).
    let _ = s.transition(WorkerState::Starting);
    s.current_tview = 0;
}

/// What a drainer should do about its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotStatus {
    Mine,
    /// DROP DATABASE asked the database's drainers to leave.
    StopRequested,
    /// Freed or reclaimed (e.g. another partition left for good): exit without touching it.
    Gone,
}

pub fn slot_status(slot: usize, dboid: u32, generation: u64) -> SlotStatus {
    let Some(mut q) = shmem::lock_exclusive() else {
        return SlotStatus::Gone;
    };
    let s = q.slot(slot);
    if s.dboid != dboid || s.generation != generation {
        SlotStatus::Gone
    } else if s.stop_requested {
        SlotStatus::StopRequested
    } else {
        SlotStatus::Mine
    }
}

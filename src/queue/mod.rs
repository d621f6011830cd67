//! The shared-memory boundary between user backends (producers) and drainers (consumers).
//! No SPI, no catalog access and nothing that raises: the commit callback calls into here.
//! This file holds the writer side (journal tickets, publish); `slots` the slot life cycle,
//! `drain` the drainer side, `status` what the SQL views read. See ARCHITECTURE.md.

pub mod drain;
pub mod histogram;
pub mod ring;
pub mod shmem;
pub mod slots;
pub mod status;
pub mod tokens;

pub use ring::{kind, partition_of, QueueEntry};
pub use shmem::{is_attached, WorkerState};

use crate::gucs;
use crate::limits::MAX_PARTITIONS;
use pgrx::pg_sys;
use shmem::{Locked, NO_SLOT_BUCKETS};

fn now() -> i64 {
    crate::pg::now()
}

/// The leader slot (partition 0) of `dboid`.
fn find_leader(q: &mut Locked, dboid: u32) -> Option<usize> {
    (0..q.max_workers()).find(|&i| {
        let s = q.slot(i);
        s.dboid == dboid && s.partition == 0
    })
}

/// Whether `dboid`'s group is still only a probe (or gone): its followers wait, and the views
/// do not show it.
fn leader_probing(q: &mut Locked, dboid: u32) -> bool {
    find_leader(q, dboid).is_none_or(|l| q.slot(l).probing)
}

/// Calls `f` for every claimed slot under one hold of the lock and collects what it returns.
/// Allocates: not for the commit callbacks.
fn collect_claimed<T>(
    mut f: impl FnMut(&mut Locked, usize, shmem::WorkerSlot) -> Option<T>,
) -> Vec<T> {
    let Some(mut q) = shmem::lock_exclusive() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for i in 0..q.max_workers() {
        let slot = *q.slot(i);
        if slot.is_free() {
            continue;
        }
        if let Some(item) = f(&mut q, i, slot) {
            out.push(item);
        }
    }
    out
}

/// Slot index of partition `p` of the group led by `leader`.
fn member(q: &mut Locked, leader: usize, p: usize) -> usize {
    usize::from(q.slot(leader).db.members[p])
}

/// Claims up to `wanted` free slots for `dboid` (at least one), leader first; the number
/// claimed fixes the database's partitions until the group is released. A fresh group always
/// starts with a recovery: keys committed while the database had no slot (or before a restart
/// or crash) are in no ring.
fn claim_group(q: &mut Locked, dboid: u32, wanted: usize, probing: bool) -> Option<usize> {
    let mut free = [0u16; MAX_PARTITIONS];
    let mut n = 0;
    for i in 0..q.max_workers() {
        if n == wanted.clamp(1, MAX_PARTITIONS) {
            break;
        }
        if q.slot(i).is_free() {
            free[n] = i as u16;
            n += 1;
        }
    }
    if n == 0 {
        return None;
    }
    let at = now();
    q.header().next_generation += 1;
    let generation = q.header().next_generation;
    for (p, &i) in free[..n].iter().enumerate() {
        q.slot(usize::from(i))
            .claim(dboid, p as u32, n as u32, generation, at);
    }
    let leader = usize::from(free[0]);
    q.slot(leader).db.members = free;
    q.slot(leader).probing = probing;
    Some(leader)
}

fn wake(latch: *mut pg_sys::Latch) {
    if !latch.is_null() {
        // SAFETY: latch pointers stored in the segment point at PGPROC latches, which live in
        // shared memory for the life of the server; SetLatch never raises.
        unsafe { pg_sys::SetLatch(latch) };
    }
}

/// Where a committing transaction's journal row went, counted as in flight from PRE_COMMIT
/// until COMMIT or ABORT so the table is not truncated under it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JournalTicket {
    Slot {
        leader: usize,
        generation: u64,
        table: usize,
    },
    /// The database had no slot (all taken): the row went to table 0.
    NoSlot { bucket: usize },
}

impl JournalTicket {
    pub fn table(&self) -> usize {
        match *self {
            JournalTicket::Slot { table, .. } => table,
            JournalTicket::NoSlot { .. } => 0,
        }
    }
}

/// PRE_COMMIT with `durability = journal`: picks the journal table for this transaction's row.
pub fn journal_begin(dboid: u32) -> Option<JournalTicket> {
    let mut q = shmem::lock_exclusive()?;
    let leader = match find_leader(&mut q, dboid) {
        Some(i) => Some(i),
        None => claim_group(&mut q, dboid, gucs::workers_per_database(), false),
    };
    let ticket = match leader {
        Some(leader) => {
            let slot = q.slot(leader);
            let table = slot.db.journal.begin_write();
            JournalTicket::Slot {
                leader,
                generation: slot.generation,
                table,
            }
        }
        None => {
            let bucket = dboid as usize % NO_SLOT_BUCKETS;
            q.header().writers_without_slot[bucket] += 1;
            JournalTicket::NoSlot { bucket }
        }
    };
    q.header().counters.journal_rows += 1;
    Some(ticket)
}

fn journal_end_locked(q: &mut Locked, ticket: JournalTicket) {
    match ticket {
        JournalTicket::Slot {
            leader,
            generation,
            table,
        } => {
            let slot = q.slot(leader);
            if slot.generation == generation && !slot.is_free() {
                slot.db.journal.end_write(table);
            }
        }
        JournalTicket::NoSlot { bucket } => {
            let count = &mut q.header().writers_without_slot[bucket];
            *count = count.saturating_sub(1);
        }
    }
}

/// ABORT after `journal_begin`: the row vanishes with the transaction.
pub fn journal_abort(ticket: JournalTicket) {
    if let Some(mut q) = shmem::lock_exclusive() {
        journal_end_locked(&mut q, ticket);
    }
}

/// `durability = none`: whether this run still has to leave its "not journaled" marker row
/// (once per claim of the database; see `DatabaseState::unjournaled_marker`).
pub fn unjournaled_marker_missing(dboid: u32) -> bool {
    let Some(mut q) = shmem::lock_exclusive() else {
        return false;
    };
    match find_leader(&mut q, dboid) {
        Some(leader) => !q.slot(leader).db.unjournaled_marker,
        None => true,
    }
}

/// Puts one committed transaction's keys into its database's rings (each key into the ring of
/// the partition that owns it) and wakes their drainers, or the launcher when the database has
/// no drainer yet. Called from the COMMIT callback: never raises, never allocates. A
/// transaction enters whole or not at all; keys that do not fit are counted as overflowed and
/// request a recovery of the database (journal replay or full reconcile): nothing is lost.
pub fn publish(
    dboid: u32,
    entries: &[QueueEntry],
    ticket: Option<JournalTicket>,
    marker_written: bool,
) {
    let Some(mut q) = shmem::lock_exclusive() else {
        return;
    };
    if let Some(ticket) = ticket {
        journal_end_locked(&mut q, ticket);
    }
    let leader = match find_leader(&mut q, dboid) {
        Some(i) => Some(i),
        None if !entries.is_empty() || marker_written => {
            claim_group(&mut q, dboid, gucs::workers_per_database(), false)
        }
        None => None,
    };
    if marker_written {
        if let Some(leader) = leader {
            q.slot(leader).db.unjournaled_marker = true;
        }
    }
    if entries.is_empty() {
        return;
    }
    let n = entries.len() as u64;
    let Some(leader) = leader else {
        // No slot left for this database; it recovers when it gets one.
        q.header().counters.overflowed += n;
        return;
    };
    let partitions = (q.slot(leader).partitions as usize).clamp(1, MAX_PARTITIONS);
    let mut counts = [0usize; MAX_PARTITIONS];
    for e in entries {
        counts[partition_of(e, partitions)] += 1;
    }
    let fits = (0..partitions).all(|p| {
        let i = member(&mut q, leader, p);
        q.slot(i).ring.free() >= ring::slots_for(counts[p])
    });
    if fits {
        let committed_at = entries[0].committed_at;
        for (p, &count) in counts.iter().enumerate().take(partitions) {
            if count > 0 {
                let i = member(&mut q, leader, p);
                q.ring(i).push_marker(committed_at);
            }
        }
        for e in entries {
            let i = member(&mut q, leader, partition_of(e, partitions));
            q.ring(i).push_key(e);
        }
        q.header().counters.enqueued += n;
    } else {
        q.slot(leader).db.recovery_requested += 1;
        q.header().counters.overflowed += n;
        counts[0] += 1;
    }
    q.header().counters.published_txns += 1;
    let mut latches = [std::ptr::null_mut::<pg_sys::Latch>(); MAX_PARTITIONS];
    let mut needs_launcher = false;
    for p in 0..partitions {
        let i = member(&mut q, leader, p);
        let slot = q.slot(i);
        needs_launcher |= !slot.worker_registered;
        // An overflow always wakes the leader (it must start a recovery); keys wake a drainer
        // only when it sleeps waiting for them.
        let overflow_wakes_leader = !fits && p == 0;
        if counts[p] > 0 && slot.pid != 0 && (slot.wake_on_publish || overflow_wakes_leader) {
            slot.wake_on_publish = false;
            latches[p] = slot.latch;
        }
    }
    let launcher_latch = q.header().launcher_latch;
    drop(q);
    for latch in latches {
        wake(latch);
    }
    if needs_launcher {
        wake(launcher_latch);
    }
}

/// Makes sure the current database has a slot group so the launcher starts its drainers now
/// rather than at its next scan (called at the commit of CREATE EXTENSION and pg_tviews_create).
/// True when `dboid` has a worker slot group, or one slot is free to claim for it: false means
/// its TVIEWs would not be refreshed until another database releases a slot.
pub fn can_be_served(dboid: u32) -> bool {
    let Some(mut q) = shmem::lock_exclusive() else {
        return false;
    };
    find_leader(&mut q, dboid).is_some() || (0..q.max_workers()).any(|i| q.slot(i).is_free())
}

pub fn ensure_slot(dboid: u32) -> bool {
    let Some(mut q) = shmem::lock_exclusive() else {
        return false;
    };
    let found = find_leader(&mut q, dboid)
        .or_else(|| claim_group(&mut q, dboid, gucs::workers_per_database(), false));
    let Some(leader) = found else {
        return false;
    };
    q.slot(leader).probing = false;
    let partitions = q.slot(leader).partitions as usize;
    let needs_launcher = (0..partitions).any(|p| {
        let i = member(&mut q, leader, p);
        !q.slot(i).worker_registered
    });
    let launcher_latch = q.header().launcher_latch;
    drop(q);
    if needs_launcher {
        wake(launcher_latch);
    }
    true
}

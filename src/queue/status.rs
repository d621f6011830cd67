//! What the monitoring views and `pg_tviews_wait` read from shared memory: copies taken under
//! one short LWLock hold. Runs in user backends.

use super::shmem::{self, Counters, WorkerState};
use super::{collect_claimed, find_leader, leader_probing, member};
use crate::limits::MAX_PARTITIONS;

#[derive(Clone, Debug)]
pub struct SlotSnapshot {
    pub slot: usize,
    pub dboid: u32,
    pub pid: i32,
    pub partition: u32,
    pub partitions: u32,
    pub state: WorkerState,
    pub pending: u64,
    pub capacity: u64,
    /// Leader only: a recovery (replay or reconcile) is requested or running.
    pub recovery_pending: bool,
    pub batches: u64,
    pub rows: u64,
    pub busy_ms: u64,
    pub current_tview: u32,
    pub started_at: i64,
    pub last_activity: i64,
    pub last_error: Option<String>,
    pub last_error_at: i64,
}

pub fn slots() -> Vec<SlotSnapshot> {
    collect_claimed(|q, i, s| {
        if leader_probing(q, s.dboid) {
            return None;
        }
        Some(SlotSnapshot {
            slot: i,
            dboid: s.dboid,
            pid: s.pid,
            partition: s.partition,
            partitions: s.partitions,
            state: s.state(),
            pending: s.ring.keys,
            capacity: s.ring.capacity,
            recovery_pending: s.partition == 0 && s.db.recovery_due(),
            batches: s.batches,
            rows: s.rows,
            busy_ms: s.busy_ms,
            current_tview: s.current_tview,
            started_at: s.started_at,
            last_activity: s.last_activity,
            last_error: s.last_error(),
            last_error_at: s.last_error_at,
        })
    })
}

#[derive(Clone, Debug, Default)]
pub struct TviewQueueStat {
    pub tview_oid: u32,
    pub pending: u64,
    pub oldest_committed_at: Option<i64>,
    pub applied: u64,
    pub failed: u64,
    pub last_applied_at: Option<i64>,
    /// Commit-to-applied latency percentiles (ms) over the last one to two minutes.
    pub lag_ms: [Option<f64>; 3],
}

/// Per-TVIEW pending counts (scanning the database's rings) and applied counters.
pub fn tview_stats(dboid: u32) -> Vec<TviewQueueStat> {
    let Some(mut q) = shmem::lock_exclusive() else {
        return Vec::new();
    };
    let mut out: Vec<TviewQueueStat> = Vec::new();
    fn entry(out: &mut Vec<TviewQueueStat>, oid: u32) -> &mut TviewQueueStat {
        let pos = match out.iter().position(|t| t.tview_oid == oid) {
            Some(p) => p,
            None => {
                out.push(TviewQueueStat {
                    tview_oid: oid,
                    ..Default::default()
                });
                out.len() - 1
            }
        };
        &mut out[pos]
    }
    if let Some(leader) = find_leader(&mut q, dboid) {
        let partitions = (q.slot(leader).partitions as usize).clamp(1, MAX_PARTITIONS);
        for p in 0..partitions {
            let i = member(&mut q, leader, p);
            q.ring(i).for_each(|e| {
                let t = entry(&mut out, e.tview_oid);
                t.pending += 1;
                t.oldest_committed_at = Some(
                    t.oldest_committed_at
                        .map_or(e.committed_at, |o| o.min(e.committed_at)),
                );
            });
        }
    }
    let now = crate::pg::now();
    let stats = q.header().tview_stats;
    for s in stats.iter().filter(|s| s.dboid == dboid && s.dboid != 0) {
        let t = entry(&mut out, s.tview_oid);
        t.applied = s.applied;
        t.failed = s.failed;
        t.lag_ms = [0.5, 0.95, 0.99].map(|p| s.lag.percentile(p, now));
        t.last_applied_at = (s.last_applied_at != 0).then_some(s.last_applied_at);
    }
    out
}

pub fn counters() -> Option<Counters> {
    shmem::lock_exclusive().map(|mut q| q.header().counters)
}

/// What `pg_tviews_wait` waits for: every ring's tail and the recovery requested at the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainTarget {
    leader: usize,
    generation: u64,
    partitions: usize,
    members: [u16; MAX_PARTITIONS],
    tails: [u64; MAX_PARTITIONS],
    recovery_epoch: u64,
}

pub fn drain_target(dboid: u32) -> Option<DrainTarget> {
    let mut q = shmem::lock_exclusive()?;
    let leader = find_leader(&mut q, dboid)?;
    let s = *q.slot(leader);
    let partitions = (s.partitions as usize).clamp(1, MAX_PARTITIONS);
    let mut tails = [0u64; MAX_PARTITIONS];
    for (p, tail) in tails.iter_mut().enumerate().take(partitions) {
        let i = member(&mut q, leader, p);
        *tail = q.slot(i).ring.tail;
    }
    Some(DrainTarget {
        leader,
        generation: s.generation,
        partitions,
        members: s.db.members,
        tails,
        recovery_epoch: if s.db.recovery_due() {
            s.db.recovery_requested
        } else {
            0
        },
    })
}

/// True once every ring consumed up to its target and the recovery requested then is done.
pub fn drained(target: &DrainTarget) -> bool {
    let Some(mut q) = shmem::lock_exclusive() else {
        return true;
    };
    let leader = *q.slot(target.leader);
    if leader.generation != target.generation || leader.is_free() {
        // The group was released (extension dropped); nothing left to wait for.
        return true;
    }
    if leader.db.recovery_done < target.recovery_epoch {
        return false;
    }
    (0..target.partitions).all(|p| {
        let slot = q.slot(usize::from(target.members[p]));
        slot.generation != target.generation || slot.ring.head >= target.tails[p]
    })
}

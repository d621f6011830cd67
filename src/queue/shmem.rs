//! The shared-memory segment: layout, request/startup hooks, and the LWLock around it.
//! Set up by the postmaster at preload; attached (inherited) by every backend and worker.
//!
//! Layout (one `ShmemInitStruct` block, sized from postmaster GUCs):
//! `[SharedHeader (counters, per-TVIEW stats, token slots)][WorkerSlot; max_workers]
//! [RingSlot; max_workers * queue_size]`.
//! Everything in it is plain old data; process-local pointers never go in, except latch pointers
//! that themselves point into shared memory (`PGPROC.procLatch`).

use super::ring::{Ring, RingHeader, RingSlot};
use crate::gucs;
use crate::journal::rotation::Journal;
use crate::limits::MAX_PARTITIONS;
use crate::pg::HookCell;
use pgrx::pg_sys;
use std::cell::UnsafeCell;
use std::mem::{align_of, size_of};

const SEGMENT_NAME: &std::ffi::CStr = c"pg_tviews_bgw queue";
const TRANCHE_NAME: &std::ffi::CStr = c"pg_tviews_bgw";
const MAGIC: u64 = 0x7476_6965_7773_0001;

/// Per-TVIEW counters shown by `pg_tviews_queue_status`; the table is small and fixed.
pub const MAX_TVIEW_STATS: usize = 512;
pub const LAST_ERROR_BYTES: usize = 256;

/// Lifecycle of a worker slot; see ARCHITECTURE.md "Slot life cycle" and "Drainer state
/// machine". Every change goes through `WorkerSlot::transition`, which refuses a next state
/// that `may_follow` does not allow (the slot keeps its state) and returns the state it was in.
///
/// The drainer states (`Idle` .. `Scrubbing`) are the step the drainer's loop is in; the loop
/// picks its next step afresh on every iteration (a recovery can follow any step, a disabled
/// worker can resume into any), so each of them may follow any other. What the machine pins is
/// who may leave `Free` and `Starting`: only a claim leaves `Free`, and only the attaching
/// drainer leaves `Starting`; a drainer whose slot was released meanwhile (or released and
/// claimed again, before the new drainer attached) cannot show its step there.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    /// No database holds the slot. Next: `Starting` (a claim: `WorkerSlot::claim`).
    Free = 0,
    /// Claimed, no drainer attached: not registered yet, or its drainer exited and waits for
    /// the postmaster's restart. Next: `Idle` (the drainer attaches: `slots::drainer_attach`),
    /// `Free`.
    Starting = 1,
    /// Nothing to do; sleeps until a publish or the naptime (`drain::go_idle`). Next: any
    /// drainer state, `Starting` (the drainer exits: `slots::drainer_detach`), `Free` (release).
    Idle = 2,
    /// Refreshing a batch. Next: as `Idle`.
    Draining = 3,
    /// Reconciling every TVIEW (recovery without a journal, or a journal marker). Next: as
    /// `Idle`.
    FullRefresh = 4,
    /// A whole batch transaction failed; retried after a backoff (`drain::record_error`).
    /// Next: as `Idle`.
    Backoff = 5,
    /// `pg_tviews_bgw.enabled` is off. Next: as `Idle`.
    Disabled = 6,
    /// The `max_rows_per_second` token bucket is empty. Next: as `Idle`.
    RateLimited = 7,
    /// Replaying the journal (recovery). Next: as `Idle`.
    Replaying = 8,
    // 9 was `Paused`, never set (a paused TVIEW does not pause its worker); not reused.
    /// The leader compares TVIEW rows with their query (the background scrub). Next: as `Idle`.
    Scrubbing = 10,
}

impl WorkerState {
    pub fn from_u32(v: u32) -> WorkerState {
        match v {
            1 => WorkerState::Starting,
            2 => WorkerState::Idle,
            3 => WorkerState::Draining,
            4 => WorkerState::FullRefresh,
            5 => WorkerState::Backoff,
            6 => WorkerState::Disabled,
            7 => WorkerState::RateLimited,
            8 => WorkerState::Replaying,
            10 => WorkerState::Scrubbing,
            _ => WorkerState::Free,
        }
    }

    /// Whether a slot in state `self` may move to `next` (the "Next:" of each variant).
    pub fn may_follow(self, next: WorkerState) -> bool {
        use WorkerState::*;
        match (self, next) {
            // A release (group freed, database gone) ends any state.
            (_, Free) => true,
            (Free, next) => next == Starting,
            (Starting, next) => next == Idle || next == Starting,
            // A drainer state: any drainer state, or Starting when the drainer exits.
            (_, _) => true,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            WorkerState::Free => "free",
            WorkerState::Starting => "starting",
            WorkerState::Idle => "idle",
            WorkerState::Draining => "draining",
            WorkerState::FullRefresh => "full refresh",
            WorkerState::Backoff => "backing off",
            WorkerState::Disabled => "disabled",
            WorkerState::RateLimited => "rate limited",
            WorkerState::Replaying => "replaying journal",
            WorkerState::Scrubbing => "scrubbing",
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    /// Keys accepted into a ring at COMMIT.
    pub enqueued: u64,
    /// Keys whose refresh committed and that left a ring.
    pub applied: u64,
    /// Keys that did not fit (their database gets a full refresh instead).
    pub overflowed: u64,
    /// Committed transactions that published at least one key.
    pub published_txns: u64,
    /// Recoveries completed: journal replays, or full reconciles of a database.
    pub full_refreshes: u64,
    /// Journal rows written by committing transactions.
    pub journal_rows: u64,
    /// Journal tables truncated after everything in them was applied.
    pub journal_truncations: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TviewStat {
    pub dboid: u32,
    pub tview_oid: u32,
    pub applied: u64,
    /// Keys whose refresh raised (each attempt counts).
    pub failed: u64,
    pub last_applied_at: i64,
    pub lag: super::histogram::LagHistogram,
}

/// Database-wide state, kept in the slot of the database's partition 0 (the leader).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DatabaseState {
    /// Recovery epochs. A recovery (journal replay, or a full reconcile without a journal)
    /// is due while `recovery_requested > recovery_done`. A fresh claim requests one (the
    /// rings are empty but committed keys may be unapplied); so does every overflow.
    pub recovery_requested: u64,
    pub recovery_done: u64,
    /// Slot indices of partitions 0..partitions.
    pub members: [u16; MAX_PARTITIONS],
    pub journal: Journal,
    /// `durability = none`: a marker row saying "keys of this run are not journaled" is in
    /// the journal, so a later start with the journal reconciles instead of trusting it.
    pub unjournaled_marker: bool,
}

impl DatabaseState {
    fn fresh(now: i64) -> DatabaseState {
        DatabaseState {
            recovery_requested: 1,
            recovery_done: 0,
            members: [0; MAX_PARTITIONS],
            journal: Journal::fresh(now),
            unjournaled_marker: false,
        }
    }

    pub fn recovery_due(&self) -> bool {
        self.recovery_requested > self.recovery_done
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct WorkerSlot {
    /// Database served; `0` means the slot is free.
    pub dboid: u32,
    pub state: u32,
    /// Pid of the attached drainer, 0 when none is running.
    pub pid: i32,
    /// Which of its database's partitions this slot drains (0 = the leader), and how many.
    pub partition: u32,
    pub partitions: u32,
    /// The drainer's latch, valid while `pid != 0`.
    pub latch: *mut pg_sys::Latch,
    /// Changes at every claim, so a writer that began under an earlier claim of this slot
    /// never adjusts the journal counters of a later one.
    pub generation: u64,
    /// The launcher registered a background worker for this slot that has not exited for good.
    pub worker_registered: bool,
    /// Claimed by the launcher only to find out whether the database has the extension.
    pub probing: bool,
    /// Ask the drainer to leave for good (DROP DATABASE).
    pub stop_requested: bool,
    /// The drainer sleeps waiting for keys: the next publish must wake it (and clears this).
    /// False while it is busy, disabled, rate limited or backing off, so commits do not signal
    /// it for nothing (one SetLatch per idle-to-busy transition, not one per commit).
    pub wake_on_publish: bool,
    pub ring: RingHeader,
    pub batches: u64,
    pub rows: u64,
    /// Total milliseconds spent in refresh transactions, for the average batch time.
    pub busy_ms: u64,
    /// TVIEW being refreshed now (0 when none).
    pub current_tview: u32,
    pub started_at: i64,
    pub last_activity: i64,
    pub last_error_at: i64,
    pub last_error_len: u32,
    pub last_error: [u8; LAST_ERROR_BYTES],
    /// Meaningful in the leader slot only.
    pub db: DatabaseState,
}

impl WorkerSlot {
    fn empty(queue_size: usize) -> WorkerSlot {
        WorkerSlot {
            dboid: 0,
            state: WorkerState::Free as u32,
            pid: 0,
            partition: 0,
            partitions: 0,
            latch: std::ptr::null_mut(),
            generation: 0,
            worker_registered: false,
            probing: false,
            stop_requested: false,
            wake_on_publish: false,
            ring: RingHeader::new(queue_size),
            batches: 0,
            rows: 0,
            busy_ms: 0,
            current_tview: 0,
            started_at: 0,
            last_activity: 0,
            last_error_at: 0,
            last_error_len: 0,
            last_error: [0; LAST_ERROR_BYTES],
            db: DatabaseState::fresh(0),
        }
    }

    /// Resets a free slot for a new claim of `dboid` as partition `partition` of `partitions`.
    pub fn claim(
        &mut self,
        dboid: u32,
        partition: u32,
        partitions: u32,
        generation: u64,
        now: i64,
    ) {
        // Only free slots are claimed, and a free slot (dboid 0) is in state Free: allowed.
        let _ = self.transition(WorkerState::Starting);
        self.dboid = dboid;
        self.pid = 0;
        self.partition = partition;
        self.partitions = partitions;
        self.latch = std::ptr::null_mut();
        self.generation = generation;
        self.worker_registered = false;
        self.probing = false;
        self.stop_requested = false;
        self.wake_on_publish = false;
        self.ring.clear();
        self.batches = 0;
        self.rows = 0;
        self.busy_ms = 0;
        self.current_tview = 0;
        self.started_at = now;
        self.last_activity = now;
        self.last_error_len = 0;
        self.last_error_at = 0;
        self.db = DatabaseState::fresh(now);
    }

    pub fn release(&mut self) {
        self.dboid = 0;
        // Free may follow any state.
        let _ = self.transition(WorkerState::Free);
        self.pid = 0;
        self.latch = std::ptr::null_mut();
        self.worker_registered = false;
        self.probing = false;
        self.stop_requested = false;
        self.current_tview = 0;
        self.ring.clear();
    }

    pub fn is_free(&self) -> bool {
        self.dboid == 0
    }

    pub fn state(&self) -> WorkerState {
        WorkerState::from_u32(self.state)
    }

    /// The one place a slot's state changes: moves to `next` if `WorkerState::may_follow`
    /// allows it, else keeps the state; `Err` holds the state that refused. Never raises (the
    /// caller holds the queue LWLock); the worker logs a refusal (`worker::set_state`).
    pub fn transition(&mut self, next: WorkerState) -> Result<(), WorkerState> {
        let current = self.state();
        if !current.may_follow(next) {
            return Err(current);
        }
        self.state = next as u32;
        Ok(())
    }

    pub fn last_error(&self) -> Option<String> {
        if self.last_error_len == 0 {
            return None;
        }
        let n = (self.last_error_len as usize).min(LAST_ERROR_BYTES);
        Some(String::from_utf8_lossy(&self.last_error[..n]).into_owned())
    }

    pub fn set_last_error(&mut self, message: &str, at: i64) {
        let mut n = message.len().min(LAST_ERROR_BYTES);
        while !message.is_char_boundary(n) {
            n -= 1;
        }
        self.last_error[..n].copy_from_slice(&message.as_bytes()[..n]);
        self.last_error_len = n as u32;
        self.last_error_at = at;
    }
}

/// Writers that journaled before their database had a slot, by `dboid % NO_SLOT_BUCKETS`:
/// the journal table they wrote to must not be truncated under them.
pub const NO_SLOT_BUCKETS: usize = 64;

#[repr(C)]
pub struct SharedHeader {
    pub magic: u64,
    pub max_workers: u64,
    pub queue_size: u64,
    pub launcher_pid: i32,
    pub launcher_latch: *mut pg_sys::Latch,
    /// Source of slot generations.
    pub next_generation: u64,
    pub counters: Counters,
    pub writers_without_slot: [u32; NO_SLOT_BUCKETS],
    pub tview_stats: [TviewStat; MAX_TVIEW_STATS],
    /// Source of token slot identities (`tokens::TokenRef::seq`).
    pub next_token_seq: u64,
    /// Read-your-writes tokens (the priority lane), see `tokens`.
    pub tokens: [super::tokens::TokenSlot; super::tokens::MAX_TOKENS],
}

fn align_up(n: usize, align: usize) -> usize {
    n.div_ceil(align) * align
}

/// Byte offsets of the three regions; pure arithmetic so it is unit-tested.
#[derive(Debug, PartialEq, Eq)]
pub struct Layout {
    pub slots_offset: usize,
    pub entries_offset: usize,
    pub total: usize,
}

impl Layout {
    pub fn new(max_workers: usize, queue_size: usize) -> Layout {
        let slots_offset = align_up(size_of::<SharedHeader>(), align_of::<WorkerSlot>());
        let entries_offset = align_up(
            slots_offset + max_workers * size_of::<WorkerSlot>(),
            align_of::<RingSlot>(),
        );
        let total = entries_offset + max_workers * queue_size * size_of::<RingSlot>();
        Layout {
            slots_offset,
            entries_offset,
            total,
        }
    }
}

/// Process-local pointers into the segment, filled in by the startup hook.
struct Attachment {
    base: *mut u8,
    lock: *mut pg_sys::LWLock,
    max_workers: usize,
    queue_size: usize,
}

struct AttachmentCell(UnsafeCell<Option<Attachment>>);
// SAFETY: PostgreSQL backends are single-threaded; the cell is written once by the startup hook
// before any reader runs in this process.
unsafe impl Sync for AttachmentCell {}

static ATTACHMENT: AttachmentCell = AttachmentCell(UnsafeCell::new(None));

static PREV_REQUEST_HOOK: HookCell<pg_sys::shmem_request_hook_type> = HookCell::new(None);
static PREV_STARTUP_HOOK: HookCell<pg_sys::shmem_startup_hook_type> = HookCell::new(None);

/// Installs the request and startup hooks. Only from `_PG_init` during shared_preload_libraries.
pub fn install_hooks() {
    // SAFETY: runs once in the postmaster while it is single-threaded; we save and chain the
    // previous hooks as every preloaded library must.
    unsafe {
        PREV_REQUEST_HOOK.set(pg_sys::shmem_request_hook);
        pg_sys::shmem_request_hook = Some(request_shmem);
        PREV_STARTUP_HOOK.set(pg_sys::shmem_startup_hook);
        pg_sys::shmem_startup_hook = Some(startup_shmem);
    }
}

/// # Safety
/// Installed as `shmem_request_hook`; the postmaster calls it once, in its request phase.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn request_shmem() {
    // SAFETY: called by the postmaster in its request phase; previous hook chained first.
    unsafe {
        if let Some(prev) = PREV_REQUEST_HOOK.get() {
            prev();
        }
        let layout = Layout::new(gucs::max_workers(), gucs::queue_size());
        pg_sys::RequestAddinShmemSpace(layout.total);
        pg_sys::RequestNamedLWLockTranche(TRANCHE_NAME.as_ptr(), 1);
    }
}

/// # Safety
/// Installed as `shmem_startup_hook`; the postmaster calls it with shared memory mapped
/// (also after a crash re-initialization).
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn startup_shmem() {
    // SAFETY: called by the postmaster (and after a crash re-init) with shared memory mapped;
    // AddinShmemInitLock serialises ShmemInitStruct as PostgreSQL requires, and the block is
    // initialised in place before anyone else can see `found == true`.
    unsafe {
        if let Some(prev) = PREV_STARTUP_HOOK.get() {
            prev();
        }
        let max_workers = gucs::max_workers();
        let queue_size = gucs::queue_size();
        let layout = Layout::new(max_workers, queue_size);
        let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock;
        pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let base =
            pg_sys::ShmemInitStruct(SEGMENT_NAME.as_ptr(), layout.total, &mut found) as *mut u8;
        if !found {
            std::ptr::write_bytes(base, 0, layout.total);
            let header = base as *mut SharedHeader;
            (*header).magic = MAGIC;
            (*header).max_workers = max_workers as u64;
            (*header).queue_size = queue_size as u64;
            let slots = base.add(layout.slots_offset) as *mut WorkerSlot;
            for i in 0..max_workers {
                slots.add(i).write(WorkerSlot::empty(queue_size));
            }
        }
        let lock = &raw mut (*pg_sys::GetNamedLWLockTranche(TRANCHE_NAME.as_ptr())).lock;
        pg_sys::LWLockRelease(init_lock);
        *ATTACHMENT.0.get() = Some(Attachment {
            base,
            lock,
            max_workers,
            queue_size,
        });
    }
}

/// True once the segment exists in this process (false when the library was not preloaded).
pub fn is_attached() -> bool {
    // SAFETY: single-threaded read of a value written once by the startup hook.
    unsafe { (*ATTACHMENT.0.get()).is_some() }
}

/// Exclusive view of the segment while the LWLock is held. Everything reachable through it is
/// plain memory access: nothing here can raise, so it is safe inside commit callbacks.
pub struct Locked {
    base: *mut u8,
    lock: *mut pg_sys::LWLock,
    max_workers: usize,
    queue_size: usize,
}

impl Locked {
    pub fn header(&mut self) -> &mut SharedHeader {
        // SAFETY: the header sits at the start of the segment; the lock is held exclusively.
        unsafe { &mut *(self.base as *mut SharedHeader) }
    }

    pub fn max_workers(&self) -> usize {
        self.max_workers
    }

    pub fn slot(&mut self, i: usize) -> &mut WorkerSlot {
        assert!(i < self.max_workers);
        let layout = Layout::new(self.max_workers, self.queue_size);
        // SAFETY: `i` is in range; slots were initialised by the startup hook.
        unsafe { &mut *(self.base.add(layout.slots_offset) as *mut WorkerSlot).add(i) }
    }

    /// The ring of slot `i` together with its header.
    pub fn ring(&mut self, i: usize) -> Ring<'_> {
        assert!(i < self.max_workers);
        let layout = Layout::new(self.max_workers, self.queue_size);
        // SAFETY: slot `i`'s header and its entries are disjoint regions of the segment; both
        // borrows end with the returned Ring, while the exclusive lock is held.
        unsafe {
            let slot = (self.base.add(layout.slots_offset) as *mut WorkerSlot).add(i);
            let entries =
                (self.base.add(layout.entries_offset) as *mut RingSlot).add(i * self.queue_size);
            Ring::new(
                &mut (*slot).ring,
                std::slice::from_raw_parts_mut(entries, self.queue_size),
            )
        }
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        // SAFETY: we acquired this lock in `lock_exclusive` and have not released it.
        unsafe { pg_sys::LWLockRelease(self.lock) };
    }
}

/// Takes the queue lock exclusively; `None` when shared memory is not set up in this process.
/// Hold the result only for short, non-raising work: never across SPI or allocation-heavy code.
pub fn lock_exclusive() -> Option<Locked> {
    // SAFETY: see `is_attached`; LWLockAcquire does not raise for a valid lock.
    unsafe {
        let att = (*ATTACHMENT.0.get()).as_ref()?;
        pg_sys::LWLockAcquire(att.lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        Some(Locked {
            base: att.base,
            lock: att.lock,
            max_workers: att.max_workers,
            queue_size: att.queue_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DRAINER_STATES: [WorkerState; 8] = [
        WorkerState::Idle,
        WorkerState::Draining,
        WorkerState::FullRefresh,
        WorkerState::Backoff,
        WorkerState::Disabled,
        WorkerState::RateLimited,
        WorkerState::Replaying,
        WorkerState::Scrubbing,
    ];

    #[test]
    fn worker_state_transitions() {
        use WorkerState::*;
        // Only a claim leaves Free; only an attach leaves Starting.
        assert!(Free.may_follow(Starting));
        assert!(Starting.may_follow(Idle));
        for d in DRAINER_STATES {
            assert!(!Free.may_follow(d), "{d:?} on a free slot");
            assert!(d == Idle || !Starting.may_follow(d), "{d:?} before attach");
            assert!(d.may_follow(Starting) && d.may_follow(Free));
            for e in DRAINER_STATES {
                assert!(d.may_follow(e), "{d:?} -> {e:?}");
            }
        }
        // Every state survives the u32 round trip through shared memory.
        for s in [Free, Starting].into_iter().chain(DRAINER_STATES) {
            assert_eq!(WorkerState::from_u32(s as u32), s);
        }
    }

    #[test]
    fn a_refused_transition_keeps_the_state() {
        let mut slot = WorkerSlot::empty(16);
        assert_eq!(
            slot.transition(WorkerState::Draining),
            Err(WorkerState::Free)
        );
        assert_eq!(slot.state(), WorkerState::Free);
        slot.claim(5, 0, 1, 1, 0);
        assert_eq!(slot.state(), WorkerState::Starting);
        assert_eq!(
            slot.transition(WorkerState::Scrubbing),
            Err(WorkerState::Starting)
        );
        assert_eq!(slot.transition(WorkerState::Idle), Ok(()));
        assert_eq!(slot.transition(WorkerState::Draining), Ok(()));
        slot.release();
        assert_eq!(slot.state(), WorkerState::Free);
    }

    #[test]
    fn layout_grows_with_both_gucs_and_keeps_alignment() {
        let small = Layout::new(1, 16);
        let wide = Layout::new(4, 16);
        let deep = Layout::new(1, 1024);
        assert!(wide.total > small.total);
        assert!(deep.total > small.total);
        assert_eq!(
            deep.total - small.total,
            (1024 - 16) * size_of::<RingSlot>()
        );
        for l in [&small, &wide, &deep] {
            assert_eq!(l.slots_offset % align_of::<WorkerSlot>(), 0);
            assert_eq!(l.entries_offset % align_of::<RingSlot>(), 0);
            assert!(l.entries_offset >= l.slots_offset);
        }
        assert_eq!(size_of::<RingSlot>(), 16);
    }

    #[test]
    fn last_error_is_truncated_on_a_char_boundary() {
        let mut slot = WorkerSlot::empty(4);
        assert_eq!(slot.last_error(), None);
        let long = "é".repeat(300);
        slot.set_last_error(&long, 7);
        let stored = slot.last_error().unwrap();
        assert!(stored.len() <= LAST_ERROR_BYTES);
        assert!(stored.chars().all(|c| c == 'é'));
        assert_eq!(slot.last_error_at, 7);
    }
}

//! Read-your-writes tokens in shared memory: the priority lane. A writing transaction reserves a
//! token slot (`pg_tviews_write_token()`, user backend); its COMMIT copies the transaction's keys
//! into the slot; the database's leader drainer refreshes them ahead of its ring, then puts the
//! keys its own refresh cascaded to back into the slot, until nothing is left; any session's
//! `pg_tviews_wait(token)` watches the slot. No SPI, nothing that raises: the commit callback
//! calls into here.
//!
//! The keys also went into the ring as usual (the ring still drains in order); refreshing them
//! twice is harmless because refresh is idempotent (invariant 3).
//!
//! Token slot states (a slot's `seq` changes whenever it is reused, so a stale token never
//! matches a recycled slot); each lists its next states:
//! - `Free`: unused. → `Reserved` (`reserve`).
//! - `Reserved`: taken by a transaction still running. → `Pending` / `Done` / `Overflow`
//!   (`committed`), `Free` (`aborted`), `Prepared` (`prepared`).
//! - `Pending`: committed keys wait for the leader. → `Applying` (`take_pending`).
//! - `Applying`: the leader is refreshing them. → `Pending` (its refresh cascaded, or its
//!   transaction failed: `served`), `Done`, `Failed`, `Overflow` (`served`).
//! - `Done`: every TVIEW row the transaction reached is applied. → `Reserved` (recycled).
//! - `Failed`: a refresh raised; the keys were deferred for retry. → `Reserved` (recycled).
//! - `Overflow`: too many keys to track; waiters wait for the whole queue. → `Reserved`.
//! - `Prepared`: PREPARE TRANSACTION; the keys went to `pg_tview_prepared`. → `Reserved`.
//!
//! A crash restart zeroes the segment: waiters then find no slot and wait for everything.

use super::shmem::{self, Locked};
use super::{find_leader, wake, QueueEntry};

/// Token slots per server; finished ones are recycled oldest first.
pub const MAX_TOKENS: usize = 256;
/// Keys one token tracks itself; a transaction (or a cascade step) reaching more rows falls
/// back to waiting for the whole queue.
pub const TOKEN_KEYS: usize = 64;

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenState {
    Free = 0,
    Reserved = 1,
    Pending = 2,
    Applying = 3,
    Done = 4,
    Failed = 5,
    Overflow = 6,
    Prepared = 7,
}

impl TokenState {
    fn from_u32(v: u32) -> TokenState {
        match v {
            1 => TokenState::Reserved,
            2 => TokenState::Pending,
            3 => TokenState::Applying,
            4 => TokenState::Done,
            5 => TokenState::Failed,
            6 => TokenState::Overflow,
            7 => TokenState::Prepared,
            _ => TokenState::Free,
        }
    }

    fn finished(self) -> bool {
        matches!(
            self,
            TokenState::Done | TokenState::Failed | TokenState::Overflow | TokenState::Prepared
        )
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct TokenSlot {
    state: u32,
    dboid: u32,
    /// Full transaction id of the writing transaction.
    fxid: u64,
    /// Identity of this use of the slot (from `SharedHeader::next_token_seq`, never 0).
    seq: u64,
    /// Last state change (µs since 2000): finished slots are recycled oldest first.
    changed_at: i64,
    nkeys: u32,
    keys: [QueueEntry; TOKEN_KEYS],
}

impl TokenSlot {
    fn state(&self) -> TokenState {
        TokenState::from_u32(self.state)
    }

    fn set(&mut self, state: TokenState, at: i64) {
        self.state = state as u32;
        self.changed_at = at;
    }

    /// Replaces the tracked keys; false (nothing copied) when they do not fit.
    fn load(&mut self, entries: &[QueueEntry]) -> bool {
        let Some(keys) = self.keys.get_mut(..entries.len()) else {
            return false;
        };
        keys.copy_from_slice(entries);
        self.nkeys = entries.len() as u32;
        true
    }
}

/// Where a token points: its slot and that use of the slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenRef {
    pub slot: usize,
    pub seq: u64,
}

fn now() -> i64 {
    crate::pg::now()
}

fn slot_of(q: &mut Locked, token: TokenRef) -> Option<&mut TokenSlot> {
    let slot = q.header().tokens.get_mut(token.slot)?;
    (slot.seq == token.seq && slot.state() != TokenState::Free).then_some(slot)
}

/// `pg_tviews_write_token()`: the slot of transaction `fxid`, reserved now (or earlier in the
/// same transaction). None when the queue is not attached or every slot is in use by
/// unfinished transactions (the token then waits for the whole queue).
pub fn reserve(dboid: u32, fxid: u64) -> Option<TokenRef> {
    let mut q = shmem::lock_exclusive()?;
    let at = now();
    let header = q.header();
    if let Some(i) = header
        .tokens
        .iter()
        .position(|t| t.state() == TokenState::Reserved && t.fxid == fxid && t.dboid == dboid)
    {
        return Some(TokenRef {
            slot: i,
            seq: header.tokens[i].seq,
        });
    }
    let free = header
        .tokens
        .iter()
        .position(|t| t.state() == TokenState::Free);
    let i = free.or_else(|| {
        header
            .tokens
            .iter()
            .enumerate()
            .filter(|(_, t)| t.state().finished())
            .min_by_key(|(_, t)| t.changed_at)
            .map(|(i, _)| i)
    })?;
    header.next_token_seq += 1;
    let seq = header.next_token_seq;
    let slot = &mut header.tokens[i];
    slot.dboid = dboid;
    slot.fxid = fxid;
    slot.seq = seq;
    slot.nkeys = 0;
    slot.set(TokenState::Reserved, at);
    Some(TokenRef { slot: i, seq })
}

/// The reserving transaction committed with `entries` (its keys, possibly none). Wakes the
/// database's leader when there is work for it. Commit callback: never raises.
pub fn committed(dboid: u32, token: TokenRef, entries: &[QueueEntry]) {
    let Some(mut q) = shmem::lock_exclusive() else {
        return;
    };
    let at = now();
    let Some(slot) = slot_of(&mut q, token) else {
        return;
    };
    if slot.state() != TokenState::Reserved {
        return;
    }
    let next = if entries.is_empty() {
        TokenState::Done
    } else if slot.load(entries) {
        TokenState::Pending
    } else {
        TokenState::Overflow
    };
    slot.set(next, at);
    if next == TokenState::Pending {
        wake_leader(q, dboid);
    }
}

/// The reserving transaction aborted: nothing to wait for, the slot is free again.
pub fn aborted(token: TokenRef) {
    let Some(mut q) = shmem::lock_exclusive() else {
        return;
    };
    if let Some(slot) = slot_of(&mut q, token) {
        if slot.state() == TokenState::Reserved {
            slot.nkeys = 0;
            slot.set(TokenState::Free, now());
        }
    }
}

/// PREPARE TRANSACTION: the keys wait in `pg_tview_prepared` for COMMIT PREPARED, which may
/// run anywhere; waiters follow the transaction's status instead.
pub fn prepared(token: TokenRef) {
    let Some(mut q) = shmem::lock_exclusive() else {
        return;
    };
    if let Some(slot) = slot_of(&mut q, token) {
        if slot.state() == TokenState::Reserved {
            slot.set(TokenState::Prepared, now());
        }
    }
}

fn wake_leader(mut q: Locked, dboid: u32) {
    let latch = find_leader(&mut q, dboid).map(|l| {
        let slot = q.slot(l);
        slot.wake_on_publish = false;
        slot.latch
    });
    drop(q);
    if let Some(latch) = latch {
        wake(latch);
    }
}

/// Leader: the pending tokens of `dboid` (up to `max_keys` keys in all, at least one token),
/// now `Applying`, and their keys.
pub fn take_pending(dboid: u32, max_keys: usize) -> (Vec<TokenRef>, Vec<QueueEntry>) {
    let mut taken = Vec::new();
    let mut keys = Vec::new();
    let Some(mut q) = shmem::lock_exclusive() else {
        return (taken, keys);
    };
    let at = now();
    for (i, slot) in q.header().tokens.iter_mut().enumerate() {
        if slot.dboid != dboid || slot.state() != TokenState::Pending {
            continue;
        }
        let n = slot.nkeys as usize;
        if !taken.is_empty() && keys.len() + n > max_keys {
            break;
        }
        keys.extend_from_slice(&slot.keys[..n.min(TOKEN_KEYS)]);
        slot.set(TokenState::Applying, at);
        taken.push(TokenRef {
            slot: i,
            seq: slot.seq,
        });
    }
    (taken, keys)
}

/// How the leader's refresh of `taken` tokens ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served<'a> {
    /// Committed; `cascaded` are the keys its writes to TVIEW tables staged for dependent
    /// TVIEWs (published to the rings as well): the tokens track those next.
    Committed { cascaded: &'a [QueueEntry] },
    /// Committed, but some keys' refresh raised and was deferred for retry.
    Failed,
    /// Committed, but some cascade cannot be followed key by key.
    Overflow,
    /// The transaction aborted: the keys are taken again.
    Aborted,
}

/// The leader's refresh transaction of `taken` ended (commit callback or after an abort).
pub fn served(taken: &[TokenRef], how: Served<'_>) {
    // Every backend's ABORT calls this; only a drainer serving tokens has any.
    if taken.is_empty() {
        return;
    }
    let Some(mut q) = shmem::lock_exclusive() else {
        return;
    };
    let at = now();
    for &token in taken {
        let Some(slot) = slot_of(&mut q, token) else {
            continue;
        };
        if slot.state() != TokenState::Applying {
            continue;
        }
        let next = match how {
            Served::Committed { cascaded: [] } => TokenState::Done,
            Served::Committed { cascaded } if slot.load(cascaded) => TokenState::Pending,
            Served::Committed { .. } => TokenState::Overflow,
            Served::Failed => TokenState::Failed,
            Served::Overflow => TokenState::Overflow,
            Served::Aborted => TokenState::Pending,
        };
        slot.set(next, at);
    }
}

/// What a waiter sees of its token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// The slot was recycled or lost in a restart: follow the transaction's status.
    Gone,
    /// The transaction has not committed (or not yet published).
    Running,
    /// Its keys (or their cascades) wait for the leader or are being applied.
    InProgress,
    Done,
    Failed,
    Overflow,
    Prepared,
}

pub fn look(dboid: u32, fxid: u64, token: TokenRef) -> Seen {
    let Some(mut q) = shmem::lock_exclusive() else {
        return Seen::Gone;
    };
    let Some(slot) = slot_of(&mut q, token) else {
        return Seen::Gone;
    };
    if slot.dboid != dboid || slot.fxid != fxid {
        return Seen::Gone;
    }
    match slot.state() {
        TokenState::Free => Seen::Gone,
        TokenState::Reserved => Seen::Running,
        TokenState::Pending | TokenState::Applying => Seen::InProgress,
        TokenState::Done => Seen::Done,
        TokenState::Failed => Seen::Failed,
        TokenState::Overflow => Seen::Overflow,
        TokenState::Prepared => Seen::Prepared,
    }
}

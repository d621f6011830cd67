//! Pure-Rust core of a fixed-capacity key ring; no PostgreSQL calls, so it is unit-tested with
//! plain `#[test]`s. The caller (queue::shmem) owns the memory and holds the LWLock.
//!
//! `head` and `tail` are monotonic 64-bit sequence numbers; a slot's index is `seq % capacity`.
//! Producers (committing backends) only move `tail`; the consumers (the ring's drainer, and the
//! leader's recovery) only move `head`, and only after the refresh that used the keys has
//! committed (at-least-once).

/// What a queued entry asks the drainer to do.
pub mod kind {
    /// Recompute the TVIEW row whose key is `key`.
    pub const ROW: u32 = 0;
    /// Recompute the whole TVIEW (e.g. its root table was truncated).
    pub const FULL: u32 = 1;
    /// From here on, `kind` names a lineage rule of the TVIEW (`pg_tview_lineage.rule`): `key`
    /// is a value of a source table that the worker resolves to TVIEW keys.
    pub const FIRST_RULE: u32 = 2;
}

/// The partition (ring of one of a database's drainers) that refreshes `entry`, out of
/// `partitions`. A TVIEW row key always maps to the same partition, so one drainer at a time
/// refreshes it (invariant 4). Whole-TVIEW refreshes go to partition 0, the leader.
pub fn partition_of(entry: &QueueEntry, partitions: usize) -> usize {
    if partitions <= 1 || entry.kind == kind::FULL {
        return 0;
    }
    // splitmix64 finalizer: cheap, and consecutive keys spread evenly.
    let mut x = (u64::from(entry.tview_oid) << 32 | u64::from(entry.kind)) ^ entry.key as u64;
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x % partitions as u64) as usize
}

/// One key as the rest of the extension handles it (batches, journal rows); process memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct QueueEntry {
    /// OID of the `tv_*` table to refresh.
    pub tview_oid: u32,
    /// One of [`kind`].
    pub kind: u32,
    /// Value of the TVIEW's `pk_<entity>` column.
    pub key: i64,
    /// Commit time of the transaction that produced the key (TimestampTz, µs since 2000).
    pub committed_at: i64,
}

/// `RingSlot::kind` of a commit marker: `key` holds the commit time of the keys after it.
const MARKER: u32 = u32::MAX;

/// One slot of a ring in shared memory, 16 bytes, plain old data: a key, or a commit marker.
/// A committing transaction writes one marker, then its keys, into each ring it uses, so the
/// commit time costs one slot per transaction and ring rather than 8 bytes per key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingSlot {
    tview_oid: u32,
    kind: u32,
    key: i64,
}

/// Positions of a ring; lives in shared memory next to the slots it describes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingHeader {
    pub head: u64,
    pub tail: u64,
    pub capacity: u64,
    /// Keys (slots that are not markers) between `head` and `tail`.
    pub keys: u64,
    /// Commit time of the transaction the key at `head` belongs to (its marker may already be
    /// consumed).
    pub head_committed_at: i64,
}

impl RingHeader {
    pub fn new(capacity: usize) -> Self {
        // queue_size is at least 16 (gucs::queue_size); a zero capacity would divide by zero.
        debug_assert!(capacity > 0, "ring capacity must be positive");
        RingHeader {
            head: 0,
            tail: 0,
            capacity: capacity.max(1) as u64,
            keys: 0,
            head_committed_at: 0,
        }
    }

    /// Slots in use (keys and markers).
    pub fn len(&self) -> usize {
        (self.tail - self.head) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.tail == self.head
    }

    pub fn free(&self) -> usize {
        self.capacity as usize - self.len()
    }

    /// Drops everything queued (used when the owner of the ring changes).
    pub fn clear(&mut self) {
        self.head = self.tail;
        self.keys = 0;
    }
}

/// Slots a transaction with `keys` keys for one ring needs there (its marker, then the keys).
pub fn slots_for(keys: usize) -> usize {
    if keys == 0 {
        0
    } else {
        keys + 1
    }
}

/// A ring viewed over memory owned elsewhere.
pub struct Ring<'a> {
    header: &'a mut RingHeader,
    slots: &'a mut [RingSlot],
}

impl<'a> Ring<'a> {
    pub fn new(header: &'a mut RingHeader, slots: &'a mut [RingSlot]) -> Self {
        let agree = header.capacity as usize == slots.len();
        assert!(agree, "ring header and storage disagree");
        Ring { header, slots }
    }

    #[cfg(test)]
    pub fn header(&self) -> &RingHeader {
        self.header
    }

    fn at(&self, seq: u64) -> RingSlot {
        self.slots[(seq % self.header.capacity) as usize]
    }

    fn put(&mut self, slot: RingSlot) {
        debug_assert!(self.header.free() > 0, "push into a full ring");
        let i = (self.header.tail % self.header.capacity) as usize;
        self.slots[i] = slot;
        self.header.tail += 1;
    }

    /// Starts a transaction's keys in this ring: they were committed at `committed_at`. The
    /// caller checked `free() >= slots_for(keys)` for the whole transaction first, so a reader
    /// never sees half a transaction and an overflow covers the whole transaction.
    pub fn push_marker(&mut self, committed_at: i64) {
        self.put(RingSlot {
            tview_oid: 0,
            kind: MARKER,
            key: committed_at,
        });
    }

    /// Appends one key of the transaction whose marker was pushed last. Never allocates.
    pub fn push_key(&mut self, entry: &QueueEntry) {
        self.put(RingSlot {
            tview_oid: entry.tview_oid,
            kind: entry.kind,
            key: entry.key,
        });
        self.header.keys += 1;
    }

    /// Copies up to `max` keys from the head into `out` without consuming them, each with its
    /// transaction's commit time; returns how many slots (keys and markers) they span.
    pub fn peek_into(&self, max: usize, out: &mut Vec<QueueEntry>) -> u64 {
        let mut committed_at = self.header.head_committed_at;
        let mut taken = 0;
        let mut seq = self.header.head;
        out.reserve(max.min(self.header.keys as usize));
        while seq < self.header.tail && taken < max {
            let slot = self.at(seq);
            if slot.kind == MARKER {
                committed_at = slot.key;
            } else {
                out.push(QueueEntry {
                    tview_oid: slot.tview_oid,
                    kind: slot.kind,
                    key: slot.key,
                    committed_at,
                });
                taken += 1;
            }
            seq += 1;
        }
        seq - self.header.head
    }

    /// Consumes every slot before sequence number `seq`, after the refresh that used those keys
    /// committed. Idempotent and monotonic: the leader's recovery may already have consumed
    /// keys that a partition's drainer refreshed too.
    pub fn consume_until(&mut self, seq: u64) {
        let seq = seq.min(self.header.tail);
        while self.header.head < seq {
            let slot = self.at(self.header.head);
            if slot.kind == MARKER {
                self.header.head_committed_at = slot.key;
            } else {
                self.header.keys -= 1;
            }
            self.header.head += 1;
        }
    }

    /// Visits every queued key, oldest first, with its commit time (for status views).
    pub fn for_each(&self, mut f: impl FnMut(&QueueEntry)) {
        let mut committed_at = self.header.head_committed_at;
        for seq in self.header.head..self.header.tail {
            let slot = self.at(seq);
            if slot.kind == MARKER {
                committed_at = slot.key;
            } else {
                f(&QueueEntry {
                    tview_oid: slot.tview_oid,
                    kind: slot.kind,
                    key: slot.key,
                    committed_at,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: i64) -> QueueEntry {
        QueueEntry {
            tview_oid: 42,
            kind: kind::ROW,
            key,
            committed_at: key * 10,
        }
    }

    /// Pushes one transaction (marker + keys) if it fits, like `queue::publish` does.
    fn push_txn(ring: &mut Ring, committed_at: i64, keys: &[i64]) -> bool {
        if ring.header().free() < slots_for(keys.len()) {
            return false;
        }
        ring.push_marker(committed_at);
        for &k in keys {
            ring.push_key(&entry(k));
        }
        true
    }

    fn peek(ring: &Ring, max: usize) -> (Vec<(i64, i64)>, u64) {
        let mut out = Vec::new();
        let slots = ring.peek_into(max, &mut out);
        (out.iter().map(|e| (e.key, e.committed_at)).collect(), slots)
    }

    fn storage(n: usize) -> (RingHeader, Vec<RingSlot>) {
        (RingHeader::new(n), vec![RingSlot::default(); n])
    }

    #[test]
    fn slots_are_16_bytes() {
        assert_eq!(std::mem::size_of::<RingSlot>(), 16);
    }

    #[test]
    fn empty_ring_has_nothing_to_peek() {
        let (mut header, mut slots) = storage(4);
        let ring = Ring::new(&mut header, &mut slots);
        assert!(ring.header().is_empty());
        assert_eq!(ring.header().free(), 4);
        assert_eq!(peek(&ring, 10), (vec![], 0));
    }

    #[test]
    fn consuming_an_empty_ring_is_a_no_op() {
        let (mut header, mut slots) = storage(4);
        let mut ring = Ring::new(&mut header, &mut slots);
        ring.consume_until(3);
        assert_eq!(ring.header().head, 0);
        assert!(push_txn(&mut ring, 5, &[1]));
        ring.consume_until(9);
        assert!(ring.header().is_empty());
        assert_eq!(ring.header().keys, 0);
        assert_eq!(ring.header().head, 2);
    }

    #[test]
    fn keys_carry_their_transactions_commit_time_and_peek_does_not_consume() {
        let (mut header, mut slots) = storage(16);
        let mut ring = Ring::new(&mut header, &mut slots);
        assert!(push_txn(&mut ring, 100, &[1, 2]));
        assert!(push_txn(&mut ring, 200, &[3]));
        assert_eq!(ring.header().keys, 3);
        assert_eq!(ring.header().len(), 5);
        assert_eq!(peek(&ring, 2), (vec![(1, 100), (2, 100)], 3));
        assert_eq!(peek(&ring, 2).1, 3, "peeking twice gives the same");
        assert_eq!(peek(&ring, 10), (vec![(1, 100), (2, 100), (3, 200)], 5));
    }

    #[test]
    fn a_batch_may_end_inside_a_transaction() {
        let (mut header, mut slots) = storage(16);
        let mut ring = Ring::new(&mut header, &mut slots);
        assert!(push_txn(&mut ring, 100, &[1, 2, 3]));
        assert!(push_txn(&mut ring, 200, &[4]));
        let (first, slots_used) = peek(&ring, 2);
        assert_eq!(first, vec![(1, 100), (2, 100)]);
        ring.consume_until(ring.header().head + slots_used);
        // The rest of the first transaction keeps its commit time, the marker being gone.
        assert_eq!(peek(&ring, 10).0, vec![(3, 100), (4, 200)]);
        assert_eq!(ring.header().keys, 2);
        let mut seen = Vec::new();
        ring.for_each(|e| seen.push((e.key, e.committed_at)));
        assert_eq!(seen, vec![(3, 100), (4, 200)]);
    }

    #[test]
    fn consuming_is_monotonic_and_idempotent() {
        let (mut header, mut slots) = storage(8);
        let mut ring = Ring::new(&mut header, &mut slots);
        assert!(push_txn(&mut ring, 1, &[1, 2, 3]));
        ring.consume_until(3);
        assert_eq!(peek(&ring, 10).0, vec![(3, 1)]);
        ring.consume_until(1);
        ring.consume_until(3);
        assert_eq!(peek(&ring, 10).0, vec![(3, 1)], "consuming is monotonic");
        assert_eq!(ring.header().keys, 1);
    }

    #[test]
    fn a_full_ring_rejects_a_whole_transaction_and_keeps_its_contents() {
        let (mut header, mut slots) = storage(5);
        let mut ring = Ring::new(&mut header, &mut slots);
        assert!(push_txn(&mut ring, 1, &[1, 2, 3]));
        assert!(
            !push_txn(&mut ring, 2, &[4, 5]),
            "2 keys + marker cannot fit in 1 free slot"
        );
        assert_eq!(ring.header().len(), 4, "nothing of it was written");
        assert_eq!(slots_for(0), 0);
        assert!(!push_txn(&mut ring, 2, &[4]));
        assert_eq!(peek(&ring, 10).0, vec![(1, 1), (2, 1), (3, 1)]);
    }

    #[test]
    fn wraps_around_many_times() {
        let (mut header, mut slots) = storage(7);
        let mut ring = Ring::new(&mut header, &mut slots);
        let mut next = 0i64;
        let mut expected = 0i64;
        for round in 0..200 {
            let keys: Vec<i64> = (0..(round % 4 + 1))
                .map(|_| {
                    next += 1;
                    next
                })
                .collect();
            assert!(push_txn(&mut ring, round, &keys));
            // Drain in batches of 2 keys, across transaction boundaries.
            loop {
                let mut out = Vec::new();
                let used = ring.peek_into(2, &mut out);
                if out.is_empty() {
                    break;
                }
                for e in &out {
                    expected += 1;
                    assert_eq!(e.key, expected);
                    assert_eq!(e.committed_at, round);
                }
                let head = ring.header().head;
                ring.consume_until(head + used);
            }
            assert_eq!(ring.header().keys, 0);
        }
        assert!(ring.header().tail > 7 * 20, "sequence numbers keep growing");
    }

    #[test]
    fn capacity_comes_from_the_header() {
        for capacity in [2usize, 16, 1000] {
            let (mut header, mut slots) = storage(capacity);
            let mut ring = Ring::new(&mut header, &mut slots);
            let keys: Vec<i64> = (0..capacity as i64 - 1).collect();
            assert!(push_txn(&mut ring, 0, &keys));
            assert!(!push_txn(&mut ring, 0, &[-1]));
            let mut seen = 0;
            ring.for_each(|_| seen += 1);
            assert_eq!(seen, capacity - 1);
        }
    }

    #[test]
    fn a_row_key_always_maps_to_the_same_partition_and_full_refreshes_to_the_leader() {
        let mut seen = [0usize; 4];
        for key in 0..4000 {
            let e = QueueEntry {
                tview_oid: 16_400,
                kind: kind::ROW,
                key,
                committed_at: key,
            };
            let p = partition_of(&e, 4);
            assert_eq!(
                p,
                partition_of(
                    &QueueEntry {
                        committed_at: 0,
                        ..e
                    },
                    4
                )
            );
            seen[p] += 1;
        }
        assert!(
            seen.iter().all(|&n| (800..1200).contains(&n)),
            "keys spread evenly: {seen:?}"
        );
        let full = QueueEntry {
            tview_oid: 16_400,
            kind: kind::FULL,
            key: 0,
            committed_at: 0,
        };
        assert_eq!(partition_of(&full, 4), 0);
        assert_eq!(partition_of(&entry(99), 1), 0);
    }

    #[test]
    #[should_panic(expected = "disagree")]
    fn header_and_storage_must_agree() {
        let (mut header, _) = storage(4);
        let mut slots = vec![RingSlot::default(); 3];
        let _ = Ring::new(&mut header, &mut slots);
    }
}

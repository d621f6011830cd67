//! Pure-Rust core of a fixed-capacity key ring; no PostgreSQL calls, so it is unit-tested with
//! plain `#[test]`s. The caller (queue::shmem) owns the memory and holds the LWLock.
//!
//! `head` and `tail` are monotonic 64-bit sequence numbers; an entry's slot is `seq % capacity`.
//! Producers (committing backends) only move `tail`; the single consumer (the drainer) only moves
//! `head`, and only after the refresh that used the entries has committed (at-least-once).

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

/// One queued key, 24 bytes, plain old data (lives in shared memory).
#[repr(C)]
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

/// Positions of a ring; lives in shared memory next to the entries it describes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingHeader {
    pub head: u64,
    pub tail: u64,
    pub capacity: u64,
}

impl RingHeader {
    pub fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "ring capacity must be positive");
        RingHeader {
            head: 0,
            tail: 0,
            capacity: capacity as u64,
        }
    }

    pub fn len(&self) -> usize {
        (self.tail - self.head) as usize
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.tail == self.head
    }

    pub fn free(&self) -> usize {
        self.capacity as usize - self.len()
    }

    /// Drops everything queued (used when the owner of the ring changes).
    pub fn clear(&mut self) {
        self.head = self.tail;
    }
}

/// A ring viewed over memory owned elsewhere.
pub struct Ring<'a> {
    header: &'a mut RingHeader,
    entries: &'a mut [QueueEntry],
}

impl<'a> Ring<'a> {
    pub fn new(header: &'a mut RingHeader, entries: &'a mut [QueueEntry]) -> Self {
        assert_eq!(
            header.capacity as usize,
            entries.len(),
            "ring header and storage disagree"
        );
        Ring { header, entries }
    }

    #[cfg(test)]
    pub fn header(&self) -> &RingHeader {
        self.header
    }

    fn slot(&self, seq: u64) -> usize {
        (seq % self.header.capacity) as usize
    }

    /// Appends all of `batch` or nothing: one transaction's keys enter together, so a reader
    /// never sees half a transaction and an overflow is reported for the whole transaction.
    /// Never allocates; safe to call from a commit callback.
    #[cfg(test)]
    pub fn push_all(&mut self, batch: &[QueueEntry]) -> bool {
        if batch.len() > self.header.free() {
            return false;
        }
        for entry in batch {
            let slot = self.slot(self.header.tail);
            self.entries[slot] = *entry;
            self.header.tail += 1;
        }
        true
    }

    /// Appends one entry; the caller checked `free()` first (a transaction enters whole).
    pub fn push(&mut self, entry: QueueEntry) {
        debug_assert!(self.header.free() > 0, "push into a full ring");
        let slot = self.slot(self.header.tail);
        self.entries[slot] = entry;
        self.header.tail += 1;
    }

    /// Copies up to `max` entries from the head into `out` without consuming them.
    pub fn peek_into(&self, max: usize, out: &mut Vec<QueueEntry>) -> usize {
        let n = max.min(self.header.len());
        out.reserve(n);
        for i in 0..n as u64 {
            out.push(self.entries[self.slot(self.header.head + i)]);
        }
        n
    }

    /// Consumes every entry before sequence number `seq`, after the refresh that used them
    /// committed. Idempotent and monotonic: the leader's recovery may already have consumed
    /// entries that a partition's drainer refreshed too.
    pub fn consume_until(&mut self, seq: u64) {
        let seq = seq.min(self.header.tail);
        if seq > self.header.head {
            self.header.head = seq;
        }
    }

    /// Visits every queued entry, oldest first (for status views).
    pub fn for_each(&self, mut f: impl FnMut(&QueueEntry)) {
        for seq in self.header.head..self.header.tail {
            f(&self.entries[self.slot(seq)]);
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

    fn keys(ring: &Ring, max: usize) -> Vec<i64> {
        let mut out = Vec::new();
        ring.peek_into(max, &mut out);
        out.iter().map(|e| e.key).collect()
    }

    #[test]
    fn empty_ring_has_nothing_to_peek() {
        let mut header = RingHeader::new(4);
        let mut storage = vec![QueueEntry::default(); 4];
        let ring = Ring::new(&mut header, &mut storage);
        assert!(ring.header().is_empty());
        assert_eq!(ring.header().free(), 4);
        assert_eq!(keys(&ring, 10), Vec::<i64>::new());
    }

    #[test]
    fn advance_on_empty_ring_is_a_no_op() {
        let mut header = RingHeader::new(4);
        let mut storage = vec![QueueEntry::default(); 4];
        let mut ring = Ring::new(&mut header, &mut storage);
        ring.consume_until(3);
        assert_eq!(ring.header().head, 0);
        assert!(ring.push_all(&[entry(1)]));
        ring.consume_until(5);
        assert!(ring.header().is_empty());
        assert_eq!(ring.header().head, 1);
    }

    #[test]
    fn fifo_order_and_peek_does_not_consume() {
        let mut header = RingHeader::new(8);
        let mut storage = vec![QueueEntry::default(); 8];
        let mut ring = Ring::new(&mut header, &mut storage);
        assert!(ring.push_all(&[entry(1), entry(2), entry(3)]));
        assert_eq!(keys(&ring, 2), vec![1, 2]);
        assert_eq!(keys(&ring, 2), vec![1, 2]);
        ring.consume_until(2);
        assert_eq!(keys(&ring, 10), vec![3]);
        ring.consume_until(1);
        assert_eq!(keys(&ring, 10), vec![3], "consuming is monotonic");
    }

    #[test]
    fn full_ring_rejects_whole_batch_and_keeps_contents() {
        let mut header = RingHeader::new(4);
        let mut storage = vec![QueueEntry::default(); 4];
        let mut ring = Ring::new(&mut header, &mut storage);
        assert!(ring.push_all(&[entry(1), entry(2), entry(3)]));
        assert!(
            !ring.push_all(&[entry(4), entry(5)]),
            "2 keys cannot fit in 1 free slot"
        );
        assert_eq!(
            ring.header().len(),
            3,
            "a rejected batch must not be partially written"
        );
        assert!(ring.push_all(&[entry(4)]));
        assert_eq!(ring.header().free(), 0);
        assert!(!ring.push_all(&[entry(5)]));
        assert_eq!(keys(&ring, 10), vec![1, 2, 3, 4]);
    }

    #[test]
    fn wraps_around_many_times() {
        let mut header = RingHeader::new(5);
        let mut storage = vec![QueueEntry::default(); 5];
        let mut ring = Ring::new(&mut header, &mut storage);
        let mut next = 0i64;
        let mut expected = 0i64;
        for round in 0..100 {
            let batch: Vec<_> = (0..(round % 4 + 1))
                .map(|_| {
                    next += 1;
                    entry(next)
                })
                .collect();
            assert!(ring.push_all(&batch));
            let mut out = Vec::new();
            ring.peek_into(usize::MAX, &mut out);
            for e in &out {
                expected += 1;
                assert_eq!(e.key, expected);
                assert_eq!(e.committed_at, expected * 10);
            }
            let head = ring.header().head;
            ring.consume_until(head + out.len() as u64);
            assert!(ring.header().is_empty());
        }
        assert!(
            ring.header().tail > 5 * 20,
            "sequence numbers keep growing past capacity"
        );
    }

    #[test]
    fn capacity_comes_from_the_header() {
        for capacity in [1usize, 16, 1000] {
            let mut header = RingHeader::new(capacity);
            let mut storage = vec![QueueEntry::default(); capacity];
            let mut ring = Ring::new(&mut header, &mut storage);
            let batch: Vec<_> = (0..capacity as i64).map(entry).collect();
            assert!(ring.push_all(&batch));
            assert!(!ring.push_all(&[entry(-1)]));
            let mut seen = 0;
            ring.for_each(|_| seen += 1);
            assert_eq!(seen, capacity);
        }
    }

    #[test]
    fn single_pushes_wrap_like_batches() {
        let mut header = RingHeader::new(3);
        let mut storage = vec![QueueEntry::default(); 3];
        let mut ring = Ring::new(&mut header, &mut storage);
        for k in 1..=3 {
            ring.push(entry(k));
        }
        assert_eq!(ring.header().free(), 0);
        ring.consume_until(2);
        ring.push(entry(4));
        ring.push(entry(5));
        assert_eq!(keys(&ring, 10), vec![3, 4, 5]);
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
        let mut header = RingHeader::new(4);
        let mut storage = vec![QueueEntry::default(); 3];
        let _ = Ring::new(&mut header, &mut storage);
    }
}

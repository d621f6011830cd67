//! Journal rotation, pure Rust in shared memory: which of the three journal tables writers
//! append to, when the leader drainer rotates them, and when a sealed table holds nothing
//! unapplied any more and may be truncated (the PgQ pattern: rotate tables and TRUNCATE, never
//! DELETE rows). Lives in the leader slot of a database; callers hold the queue LWLock (the
//! commit callbacks among them: nothing here raises). Table states: ARCHITECTURE.md "Journal
//! rotation".

use crate::limits::MAX_PARTITIONS;

pub use super::TABLES;

/// Life cycle of one journal table; see ARCHITECTURE.md "Journal rotation".
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableState {
    /// Truncated; writers do not use it.
    Empty = 0,
    /// Writers append here.
    Current = 1,
    /// No new writers; transactions that chose it may still be committing.
    Sealed = 2,
    /// Every writer is done; waits until the keys published before that moment are applied.
    Draining = 3,
}

impl TableState {
    fn from_u32(v: u32) -> TableState {
        match v {
            1 => TableState::Current,
            2 => TableState::Sealed,
            3 => TableState::Draining,
            _ => TableState::Empty,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            TableState::Empty => "empty",
            TableState::Current => "current",
            TableState::Sealed => "sealed",
            TableState::Draining => "draining",
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalTable {
    pub state: u32,
    /// Transactions that wrote a row here and have not committed or aborted yet.
    pub inflight: u32,
    /// Rows written since it became current.
    pub rows: u64,
    /// When it became current (µs), for the rotation interval.
    pub since: i64,
    /// Recovery epoch requested when it started draining: a replay must have covered it.
    pub drain_epoch: u64,
    /// Ring tails of every partition when it started draining: heads must pass them.
    pub drain_tails: [u64; MAX_PARTITIONS],
}

impl JournalTable {
    const fn new(state: TableState, now: i64) -> JournalTable {
        JournalTable {
            state: state as u32,
            inflight: 0,
            rows: 0,
            since: now,
            drain_epoch: 0,
            drain_tails: [0; MAX_PARTITIONS],
        }
    }

    pub fn state(&self) -> TableState {
        TableState::from_u32(self.state)
    }
}

/// Journal rotation state of one database.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Journal {
    pub current: u32,
    pub tables: [JournalTable; TABLES],
}

impl Journal {
    /// State for a freshly claimed database (first use, or shared memory re-initialized). The
    /// other two tables may hold rows written before: they drain like sealed tables, which
    /// means only after the recovery replay that a fresh claim always requests.
    pub const fn fresh(now: i64) -> Journal {
        Journal {
            current: 0,
            tables: [
                JournalTable::new(TableState::Current, now),
                JournalTable::new(TableState::Sealed, now),
                JournalTable::new(TableState::Sealed, now),
            ],
        }
    }

    /// A writer's PRE_COMMIT: the table it appends its row to, counted as in flight.
    pub fn begin_write(&mut self) -> usize {
        let t = self.current as usize % TABLES;
        self.tables[t].inflight += 1;
        self.tables[t].rows += 1;
        t
    }

    /// The writer committed or aborted.
    pub fn end_write(&mut self, table: usize) {
        if let Some(t) = self.tables.get_mut(table) {
            t.inflight = t.inflight.saturating_sub(1);
        }
    }

    /// Switches writers to the next table when the current one has rows, has been current for
    /// `interval_us`, and the next one is empty. Returns true when it rotated.
    pub fn rotate_if_due(&mut self, now: i64, interval_us: i64) -> bool {
        let current = self.current as usize % TABLES;
        let next = (current + 1) % TABLES;
        let cur = &self.tables[current];
        if cur.rows == 0
            || now - cur.since < interval_us
            || self.tables[next].state() != TableState::Empty
        {
            return false;
        }
        self.tables[current].state = TableState::Sealed as u32;
        self.tables[next] = JournalTable::new(TableState::Current, now);
        self.current = next as u32;
        true
    }

    /// Moves sealed tables whose writers are all done to draining, remembering what must be
    /// applied first: the keys published so far (`tails`, one per partition) and the recovery
    /// requested so far (`requested_epoch`, covering overflowed keys). `writers_without_slot`
    /// counts writers of this database that journaled before it had a slot (into table 0).
    pub fn seal_finished(
        &mut self,
        tails: &[u64],
        requested_epoch: u64,
        writers_without_slot: u32,
    ) {
        for (i, t) in self.tables.iter_mut().enumerate() {
            if t.state() != TableState::Sealed || t.inflight != 0 {
                continue;
            }
            if i == 0 && writers_without_slot != 0 {
                continue;
            }
            t.state = TableState::Draining as u32;
            t.drain_epoch = requested_epoch;
            t.drain_tails = [0; MAX_PARTITIONS];
            for (slot, tail) in t.drain_tails.iter_mut().zip(tails) {
                *slot = *tail;
            }
        }
    }

    /// A draining table whose rows are all applied: every partition's head passed the tail it
    /// had when draining began, and a replay covered every overflow requested by then.
    pub fn truncatable(&self, heads: &[u64], recovered_epoch: u64) -> Option<usize> {
        self.tables.iter().position(|t| {
            t.state() == TableState::Draining
                && recovered_epoch >= t.drain_epoch
                && heads.iter().zip(&t.drain_tails).all(|(h, tail)| h >= tail)
        })
    }

    /// The leader truncated table `table`.
    pub fn truncated(&mut self, table: usize) {
        if let Some(t) = self.tables.get_mut(table) {
            if t.state() == TableState::Draining {
                *t = JournalTable::new(TableState::Empty, 0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: i64 = 1_000_000;

    fn states(j: &Journal) -> Vec<TableState> {
        j.tables.iter().map(JournalTable::state).collect()
    }

    #[test]
    fn a_fresh_journal_drains_its_old_tables_only_after_the_recovery_replay() {
        let mut j = Journal::fresh(0);
        assert_eq!(
            states(&j),
            [TableState::Current, TableState::Sealed, TableState::Sealed]
        );
        // A fresh claim requests recovery epoch 1; nothing recovered yet.
        j.seal_finished(&[0, 0], 1, 0);
        assert_eq!(j.truncatable(&[0, 0], 0), None, "replay has not run");
        let t = j.truncatable(&[0, 0], 1).expect("replayed: truncatable");
        assert!(t == 1 || t == 2);
        j.truncated(t);
        assert_eq!(j.tables[t].state(), TableState::Empty);
    }

    #[test]
    fn rotation_needs_rows_time_and_an_empty_next_table() {
        let mut j = Journal::fresh(0);
        j.seal_finished(&[0], 0, 0);
        for t in [1, 2] {
            j.truncated(t);
        }
        assert!(!j.rotate_if_due(100 * SEC, 5 * SEC), "no rows: no rotation");
        let t = j.begin_write();
        assert_eq!(t, 0);
        j.end_write(t);
        assert!(!j.rotate_if_due(SEC, 5 * SEC), "too young");
        assert!(j.rotate_if_due(6 * SEC, 5 * SEC));
        assert_eq!(j.current, 1);
        assert_eq!(
            states(&j),
            [TableState::Sealed, TableState::Current, TableState::Empty]
        );
        j.begin_write();
        assert!(j.rotate_if_due(12 * SEC, 5 * SEC));
        j.begin_write();
        assert!(
            !j.rotate_if_due(18 * SEC, 5 * SEC),
            "table 0 is not truncated yet: nowhere to rotate to"
        );
    }

    #[test]
    fn a_sealed_table_waits_for_its_writers_then_for_their_keys() {
        let mut j = Journal::fresh(0);
        j.seal_finished(&[0], 0, 0);
        for t in [1, 2] {
            j.truncated(t);
        }
        let slow_writer = j.begin_write();
        assert!(j.rotate_if_due(10 * SEC, 5 * SEC));
        // The slow writer still commits into table 0: it must not start draining.
        j.seal_finished(&[40, 7], 3, 0);
        assert_eq!(j.tables[0].state(), TableState::Sealed);
        j.end_write(slow_writer);
        // Its keys were published: the rings' tails are now 50 and 9.
        j.seal_finished(&[50, 9], 3, 0);
        assert_eq!(j.tables[0].state(), TableState::Draining);
        assert_eq!(
            j.truncatable(&[49, 9], 3),
            None,
            "partition 0 not there yet"
        );
        assert_eq!(
            j.truncatable(&[50, 9], 2),
            None,
            "an overflow is not replayed"
        );
        assert_eq!(j.truncatable(&[50, 9], 3), Some(0));
    }

    #[test]
    fn writers_without_a_slot_hold_table_zero() {
        let mut j = Journal::fresh(0);
        j.tables[1].state = TableState::Empty as u32;
        j.begin_write();
        assert!(j.rotate_if_due(10 * SEC, 5 * SEC));
        j.end_write(0);
        j.seal_finished(&[0], 0, 1);
        assert_eq!(j.tables[0].state(), TableState::Sealed);
        j.seal_finished(&[0], 0, 0);
        assert_eq!(j.tables[0].state(), TableState::Draining);
    }

    #[test]
    fn end_write_never_underflows() {
        let mut j = Journal::fresh(0);
        j.end_write(0);
        j.end_write(7);
        assert_eq!(j.tables[0].inflight, 0);
    }
}

//! The journal (`durability = journal`), in one place: three WAL-logged tables
//! `pg_tview_journal_{0,1,2}` (named here only) that every committing transaction with staged
//! keys appends one row to, inside the transaction, so a restart or a queue overflow loses
//! nothing (ARCHITECTURE.md "Journal rotation"). By process:
//! - `write`: user backends (and drainers whose refreshes cascade) append rows at PRE_COMMIT,
//!   and `pg_tview_prepared` rows at PRE_PREPARE;
//! - `rotation`: the tables' life cycle in shared memory (no SPI, nothing raises);
//! - `replay`: the leader drainer reads every row back in a recovery and truncates drained
//!   tables.
//!
//! This file: the table names and the on-disk format of one row.

pub mod replay;
pub mod rotation;
pub mod write;

use crate::queue::QueueEntry;

/// Number of journal tables: one receives rows, one drains, one is empty and ready.
pub const TABLES: usize = 3;

/// Name of journal table `i` (0, 1 or 2; anything above is 2).
pub fn table_name(i: usize) -> &'static std::ffi::CStr {
    match i {
        0 => c"pg_tview_journal_0",
        1 => c"pg_tview_journal_1",
        _ => c"pg_tview_journal_2",
    }
}

/// The three names as a SQL list, for `relname IN (...)`.
pub const TABLE_LIST_SQL: &str =
    "('pg_tview_journal_0', 'pg_tview_journal_1', 'pg_tview_journal_2')";

/// Every row of the three tables (`written_at`, `entries`).
pub const ALL_ROWS_SQL: &str =
    "SELECT * FROM pg_tview_journal_0 UNION ALL SELECT * FROM pg_tview_journal_1 \
                                UNION ALL SELECT * FROM pg_tview_journal_2";

/// Format version of a journal row's `entries` column.
const FORMAT: u32 = 1;
const ENTRY_BYTES: usize = 16;

/// One journal row's payload: a 4-byte format version, then 16 bytes per key (TVIEW oid u32,
/// kind u32, key i64; little-endian). The commit time is not stored per key.
pub fn encode(entries: &[QueueEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + entries.len() * ENTRY_BYTES);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.tview_oid.to_le_bytes());
        out.extend_from_slice(&e.kind.to_le_bytes());
        out.extend_from_slice(&e.key.to_le_bytes());
    }
    out
}

/// Appends the entries of one journal row to `out`, with `committed_at` as their commit time.
pub fn decode(bytes: &[u8], committed_at: i64, out: &mut Vec<QueueEntry>) -> Result<(), String> {
    let (version, body) = bytes
        .split_first_chunk::<4>()
        .ok_or_else(|| "journal row shorter than its header".to_string())?;
    if u32::from_le_bytes(*version) != FORMAT {
        return Err(format!(
            "journal row format {} is not supported",
            u32::from_le_bytes(*version)
        ));
    }
    if body.len() % ENTRY_BYTES != 0 {
        return Err(format!("journal row of {} bytes is truncated", bytes.len()));
    }
    out.reserve(body.len() / ENTRY_BYTES);
    for chunk in body.chunks_exact(ENTRY_BYTES) {
        // Fixed-size splits of a 16-byte chunk: never `None`, but nothing here can panic.
        let Some((oid, rest)) = chunk.split_first_chunk::<4>() else {
            continue;
        };
        let Some((kind, key)) = rest.split_first_chunk::<4>() else {
            continue;
        };
        let Some(key) = key.first_chunk::<8>() else {
            continue;
        };
        out.push(QueueEntry {
            tview_oid: u32::from_le_bytes(*oid),
            kind: u32::from_le_bytes(*kind),
            key: i64::from_le_bytes(*key),
            committed_at,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::ring::kind;

    #[test]
    fn rows_round_trip_through_the_journal_format() {
        let entries = [
            QueueEntry {
                tview_oid: 16_384,
                kind: kind::ROW,
                key: -5,
                committed_at: 0,
            },
            QueueEntry {
                tview_oid: u32::MAX,
                kind: kind::FIRST_RULE + 3,
                key: i64::MAX,
                committed_at: 0,
            },
        ];
        let bytes = encode(&entries);
        assert_eq!(bytes.len(), 4 + 2 * 16);
        let mut out = Vec::new();
        decode(&bytes, 77, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        for (a, b) in out.iter().zip(&entries) {
            assert_eq!((a.tview_oid, a.kind, a.key), (b.tview_oid, b.kind, b.key));
            assert_eq!(a.committed_at, 77);
        }
        assert!(decode(&bytes[..bytes.len() - 1], 0, &mut out).is_err());
        assert!(decode(&[9, 0, 0, 0], 0, &mut out).is_err());
        assert!(decode(&[], 0, &mut out).is_err());
    }
}

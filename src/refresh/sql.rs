//! Builds the set-based refresh statements for one TVIEW; pure string work, unit-tested.
//! Used by the drainer (and by pg_tviews_create to validate a new TVIEW).

pub use crate::catalog::TviewShape;

impl TviewShape {
    /// The key and value columns qualified by `alias` (`v.pk_post, v.data`).
    pub fn columns_of(&self, alias: &str) -> String {
        std::iter::once(self.key.as_str())
            .chain(self.values.iter().map(String::as_str))
            .map(|c| format!("{alias}.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn all_columns(&self) -> String {
        std::iter::once(self.key.as_str())
            .chain(self.values.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `INSERT .. ON CONFLICT` of the rows of `src` that writes only rows whose values
    /// changed, so an unchanged recompute costs no new tuple version.
    fn upsert(&self) -> String {
        self.upsert_from("src")
    }

    /// `upsert` of the rows of `source` (a FROM item that has the table's columns).
    fn upsert_from(&self, source: &str) -> String {
        let cols = self.all_columns();
        let conflict = if self.values.is_empty() {
            "DO NOTHING".to_string()
        } else {
            let set = self
                .values
                .iter()
                .map(|c| format!("{c} = EXCLUDED.{c}"))
                .collect::<Vec<_>>()
                .join(", ");
            let old = self
                .values
                .iter()
                .map(|c| format!("t.{c}"))
                .collect::<Vec<_>>()
                .join(", ");
            let new = self
                .values
                .iter()
                .map(|c| format!("EXCLUDED.{c}"))
                .collect::<Vec<_>>()
                .join(", ");
            format!("DO UPDATE SET {set} WHERE ROW({old}) IS DISTINCT FROM ROW({new})")
        };
        format!(
            "INSERT INTO {table} AS t ({cols}) SELECT {cols} FROM {source} ON CONFLICT ({key}) {conflict}",
            table = self.table,
            key = self.key
        )
    }

    /// Recomputes the view's rows that satisfy `filter` (a condition on the key column, or
    /// none), upserts them, and deletes the table's rows in the same key set that the view no
    /// longer returns. Returns one row: the number of rows written, and how many rows of the
    /// view's result repeat a key (a join that became one-to-many; the caller raises, which
    /// rolls the statement back, so a TVIEW never silently keeps one of them).
    fn reconcile_sql(&self, filter: Option<&str>) -> String {
        let (src_where, del_where) = match filter {
            Some(f) => (
                format!(" WHERE {}", f.replace("{k}", &self.key)),
                format!("{} AND ", f.replace("{k}", &format!("t.{}", self.key))),
            ),
            None => (String::new(), String::new()),
        };
        format!(
            "WITH src AS MATERIALIZED (SELECT {cols} FROM {view}{src_where}), \
             up AS ({upsert} RETURNING 1), \
             del AS (DELETE FROM {table} t WHERE {del_where}\
                     NOT EXISTS (SELECT 1 FROM src WHERE src.{key} = t.{key}) RETURNING 1) \
             SELECT ((SELECT count(*) FROM up) + (SELECT count(*) FROM del))::bigint, \
                    (SELECT count(*) - count(DISTINCT {key}) FROM src)::bigint",
            cols = self.all_columns(),
            view = self.view,
            key = self.key,
            table = self.table,
            upsert = self.upsert()
        )
    }

    /// Recomputes the rows whose key is in `$1 bigint[]`: upsert what the view returns, delete
    /// what it no longer returns. Returns one row: rows written, repeated keys.
    pub fn refresh_keys_sql(&self) -> String {
        self.reconcile_sql(Some("{k} = ANY($1)"))
    }

    /// The refresh of the keys in `$1 bigint[]` that the worker runs for every batch: only the
    /// upsert of what the view returns (`delete_missing_keys_sql` runs after it when some key
    /// has no row in the view any more). A smaller plan than `refresh_keys_sql`'s: its
    /// executor start and end were a quarter of a sync-mode write's CPU. Returns one row per
    /// row of the view's result: its key, and the rows written (the same in every row). The
    /// caller counts the keys, which tells repeated keys (a join that became one-to-many) and
    /// keys the view no longer returns; counting them here took two more aggregates, one of
    /// them sorting, in every statement's executor start and run.
    pub fn upsert_keys_sql(&self) -> String {
        format!(
            "WITH src AS MATERIALIZED (SELECT {cols} FROM {view} WHERE {key} = ANY($1)), \
             up AS ({upsert} RETURNING 1) \
             SELECT src.{key}::bigint, (SELECT count(*) FROM up)::bigint FROM src",
            cols = self.all_columns(),
            view = self.view,
            key = self.key,
            upsert = self.upsert()
        )
    }

    /// `upsert_keys_sql` for writing statements (sync mode), which need the keys the view
    /// returned but not the rows written: the view's rows pass through
    /// `{schema}._pg_tviews_note_key(key)` (`refresh::plans`), which hands each key to the
    /// caller, on their way into the upsert. Leaving out the count of rows written (its
    /// aggregate, init plan and `RETURNING`) saved 8% of a sync-mode write's instructions, this
    /// form instead of the materialized `src` (read twice) and rows returned through SPI 2.4%
    /// more. `OFFSET 0` keeps the view a subquery of its own: the volatile
    /// function then sees exactly the view's result rows (pulled up into the outer query, it
    /// could be evaluated at a scan below the view's joins). Returns nothing.
    pub fn upsert_keys_noting_sql(&self, schema: &str) -> String {
        let source = format!(
            "(SELECT {cols} FROM {view} WHERE {key} = ANY($1) OFFSET 0) AS src \
             WHERE {schema}._pg_tviews_note_key(src.{key}::bigint)",
            cols = self.all_columns(),
            view = self.view,
            key = self.key,
        );
        self.upsert_from(&source)
    }

    /// Deletes the rows whose key is in `$1 bigint[]` that the view no longer returns (after
    /// `upsert_keys_sql`, whose snapshot may be older: a row the view returns again by now is
    /// kept, and the write that brought it back queued its key). Returns rows deleted.
    pub fn delete_missing_keys_sql(&self) -> String {
        format!(
            "WITH del AS (DELETE FROM {table} t WHERE t.{key} = ANY($1) \
                          AND NOT EXISTS (SELECT 1 FROM {view} v WHERE v.{key} = t.{key}) RETURNING 1) \
             SELECT count(*)::bigint FROM del",
            table = self.table,
            view = self.view,
            key = self.key
        )
    }

    /// Rewrites the rows whose key is in `$1 bigint[]` with their own values (a new tuple
    /// version, HOT when possible) so the table's capture triggers fire for them; returns the
    /// number of rows found. The priority lane uses it to follow cascades that an earlier
    /// refresh of the same rows already started (see `Plans::touch`).
    pub fn touch_keys_sql(&self) -> String {
        format!(
            "WITH t AS (UPDATE {table} t SET {key} = t.{key} WHERE t.{key} = ANY($1) RETURNING 1) \
             SELECT count(*)::bigint FROM t",
            table = self.table,
            key = self.key
        )
    }

    /// Reconciles the keys `$1 <= key <= $2` with the view: one bounded batch of a full
    /// reconcile, so a large TVIEW is reconciled in short transactions.
    pub fn refresh_range_sql(&self) -> String {
        self.reconcile_sql(Some("{k} >= $1 AND {k} <= $2"))
    }

    /// The upper end of the next reconcile batch starting at key `$1`: it holds at most `$2`
    /// keys of the TVIEW and `$2` keys of the root table (both read through their key index).
    /// NULL when neither has a key left from `$1` on.
    pub fn range_end_sql(&self) -> String {
        let root = self.root.as_ref().map_or(String::new(), |root| {
            format!(
                " UNION ALL (SELECT r.{key}::bigint FROM {root} r WHERE r.{key} >= $1 ORDER BY r.{key} LIMIT $2)",
                key = self.root_key
            )
        });
        format!(
            "SELECT max(k) FROM ((SELECT t.{key}::bigint AS k FROM {table} t WHERE t.{key} >= $1 ORDER BY t.{key} LIMIT $2){root}) s",
            key = self.key,
            table = self.table,
        )
    }

    /// Read-only comparison of the view's and the table's rows whose key satisfies `filter`
    /// (a condition on `{k}`, the key column), for the background scrub. Returns one row: how
    /// many keys were compared, then the keys that differ (missing, extra or stale rows) with
    /// an md5 of the view's row and of the table's row (`''` where the row is absent), as
    /// arrays ordered by key. The hashes let a later look tell whether either side changed.
    fn compare_sql(&self, filter: &str) -> String {
        format!(
            "WITH v AS MATERIALIZED (SELECT {cols} FROM {view} WHERE {vf}), \
             t AS MATERIALIZED (SELECT {cols} FROM {table} x WHERE {tf}), \
             d AS (SELECT coalesce(v.{key}, t.{key})::bigint AS key, \
                          CASE WHEN v.{key} IS NOT NULL THEN md5(ROW({vc})::text) ELSE '' END AS vh, \
                          CASE WHEN t.{key} IS NOT NULL THEN md5(ROW({tc})::text) ELSE '' END AS th \
                   FROM v FULL JOIN t ON t.{key} = v.{key} \
                   WHERE v.{key} IS NULL OR t.{key} IS NULL OR ROW({vc}) IS DISTINCT FROM ROW({tc})) \
             SELECT greatest((SELECT count(*) FROM v), (SELECT count(*) FROM t))::bigint, \
                    (SELECT array_agg(key ORDER BY key) FROM d), \
                    (SELECT array_agg(vh ORDER BY key) FROM d), \
                    (SELECT array_agg(th ORDER BY key) FROM d)",
            cols = self.all_columns(),
            view = self.view,
            table = self.table,
            key = self.key,
            vf = filter.replace("{k}", &self.key),
            tf = filter.replace("{k}", &format!("x.{}", self.key)),
            vc = self.columns_of("v"),
            tc = self.columns_of("t"),
        )
    }

    /// Scrub comparison of the keys `$1 <= key <= $2` (see `compare_sql`).
    pub fn compare_range_sql(&self) -> String {
        self.compare_sql("{k} >= $1 AND {k} <= $2")
    }

    /// Scrub comparison of the keys in `$1 bigint[]` (see `compare_sql`).
    pub fn compare_keys_sql(&self) -> String {
        self.compare_sql("{k} = ANY($1)")
    }

    /// Reconciles the whole table with its view (after overflow, TRUNCATE, a restart).
    pub fn refresh_all_sql(&self) -> String {
        self.reconcile_sql(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(values: &[&str]) -> TviewShape {
        TviewShape {
            table: "public.tv_post".into(),
            view: "public.v_post".into(),
            key: "pk_post".into(),
            root_key: "pk_post".into(),
            values: values.iter().map(|s| s.to_string()).collect(),
            root: Some("public.tb_post".into()),
        }
    }

    #[test]
    fn keyed_refresh_filters_upsert_and_delete_by_the_key_array() {
        let sql = shape(&["id", "data"]).refresh_keys_sql();
        assert!(sql.contains("SELECT pk_post, id, data FROM public.v_post WHERE pk_post = ANY($1)"));
        assert!(sql.contains(
            "ON CONFLICT (pk_post) DO UPDATE SET id = EXCLUDED.id, data = EXCLUDED.data"
        ));
        assert!(sql
            .contains("WHERE ROW(t.id, t.data) IS DISTINCT FROM ROW(EXCLUDED.id, EXCLUDED.data)"));
        assert!(sql.contains("DELETE FROM public.tv_post t WHERE t.pk_post = ANY($1)"));
    }

    #[test]
    fn batch_refresh_upserts_then_deletes_only_what_the_view_lost() {
        let s = shape(&["id", "data"]);
        let up = s.upsert_keys_sql();
        assert!(up.contains("SELECT pk_post, id, data FROM public.v_post WHERE pk_post = ANY($1)"));
        assert!(up.contains("ON CONFLICT (pk_post) DO UPDATE"));
        assert!(!up.contains("DELETE"));
        assert!(
            up.ends_with(
                "RETURNING 1) SELECT src.pk_post::bigint, (SELECT count(*) FROM up)::bigint FROM src"
            ),
            "{up}"
        );
        let noting = s.upsert_keys_noting_sql("\"ext\"");
        assert!(
            noting.starts_with(
                "INSERT INTO public.tv_post AS t (pk_post, id, data) SELECT pk_post, id, data FROM \
                 (SELECT pk_post, id, data FROM public.v_post WHERE pk_post = ANY($1) OFFSET 0) AS src \
                 WHERE \"ext\"._pg_tviews_note_key(src.pk_post::bigint) ON CONFLICT (pk_post) DO UPDATE"
            ),
            "{noting}"
        );
        assert!(!noting.contains("RETURNING"), "{noting}");
        let del = s.delete_missing_keys_sql();
        assert!(del.contains("DELETE FROM public.tv_post t WHERE t.pk_post = ANY($1)"));
        assert!(
            del.contains("NOT EXISTS (SELECT 1 FROM public.v_post v WHERE v.pk_post = t.pk_post)")
        );
    }

    #[test]
    fn full_refresh_has_no_key_filter() {
        let sql = shape(&["data"]).refresh_all_sql();
        assert!(!sql.contains("$1"));
        assert!(sql.contains("WHERE NOT EXISTS (SELECT 1 FROM src WHERE src.pk_post = t.pk_post)"));
    }

    #[test]
    fn range_batches_bound_both_the_recompute_and_the_delete() {
        let s = shape(&["data"]);
        let sql = s.refresh_range_sql();
        assert!(sql.contains("FROM public.v_post WHERE pk_post >= $1 AND pk_post <= $2"));
        assert!(
            sql.contains("DELETE FROM public.tv_post t WHERE t.pk_post >= $1 AND t.pk_post <= $2")
        );
        let end = s.range_end_sql();
        assert!(
            end.contains("FROM public.tv_post t WHERE t.pk_post >= $1 ORDER BY t.pk_post LIMIT $2")
        );
        assert!(
            end.contains("FROM public.tb_post r WHERE r.pk_post >= $1 ORDER BY r.pk_post LIMIT $2")
        );
        let aliased = TviewShape {
            key: "pk_post_card".into(),
            ..s.clone()
        };
        assert!(aliased
            .range_end_sql()
            .contains("FROM public.tb_post r WHERE r.pk_post >= $1 ORDER BY r.pk_post LIMIT $2"));
        let rootless = TviewShape { root: None, ..s };
        assert!(!rootless.range_end_sql().contains("UNION ALL"));
    }

    #[test]
    fn every_reconcile_counts_repeated_keys() {
        // The batch upsert returns the view's keys instead, which `Plans::refresh` counts.
        for sql in [
            shape(&["data"]).refresh_keys_sql(),
            shape(&["data"]).refresh_all_sql(),
            shape(&["data"]).refresh_range_sql(),
        ] {
            assert!(
                sql.contains("(SELECT count(*) - count(DISTINCT pk_post) FROM src)::bigint"),
                "{sql}"
            );
        }
    }

    #[test]
    fn scrub_compare_is_read_only_and_bounded_on_both_sides() {
        let s = shape(&["id", "data"]);
        let sql = s.compare_range_sql();
        assert!(sql.contains(
            "SELECT pk_post, id, data FROM public.v_post WHERE pk_post >= $1 AND pk_post <= $2"
        ));
        assert!(sql.contains("FROM public.tv_post x WHERE x.pk_post >= $1 AND x.pk_post <= $2"));
        assert!(sql.contains(
            "ROW(v.pk_post, v.id, v.data) IS DISTINCT FROM ROW(t.pk_post, t.id, t.data)"
        ));
        for word in ["INSERT", "UPDATE", "DELETE"] {
            assert!(!sql.contains(word), "{sql}");
        }
        assert!(s
            .compare_keys_sql()
            .contains("FROM public.tv_post x WHERE x.pk_post = ANY($1)"));
    }

    #[test]
    fn key_only_table_does_nothing_on_conflict() {
        let sql = shape(&[]).refresh_keys_sql();
        assert!(sql.contains("ON CONFLICT (pk_post) DO NOTHING"));
    }
}

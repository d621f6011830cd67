//! DDL spellings of the TVIEW life cycle, run in user backends from event triggers (so they
//! work in every session, even before the library was loaded there):
//! `CREATE TABLE tv_x AS SELECT ...` becomes a TVIEW, `DROP TABLE tv_x` drops what it owned.

use super::tview;
use crate::errors::raise;
use pgrx::prelude::*;
use pgrx::spi::quote_identifier;
use pgrx::PgSqlErrorCode as Code;

/// Splits SQL text into statements at top-level semicolons, skipping quotes, dollar quotes and
/// comments.
fn statements(sql: &str) -> Vec<&str> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'\'' | b'"' => {
                let quote = bytes[i];
                i += 1;
                while i < bytes.len() && bytes[i] != quote {
                    i += 1;
                }
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            b'$' => {
                // $tag$ ... $tag$ (tag may be empty)
                let tag_end = bytes[i + 1..]
                    .iter()
                    .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_'));
                if let Some(len) = tag_end {
                    if bytes.get(i + 1 + len) == Some(&b'$') {
                        let tag = &sql[i..i + len + 2];
                        if let Some(close) = sql[i + tag.len()..].find(tag) {
                            i += tag.len() + close + tag.len() - 1;
                        }
                    }
                }
            }
            b';' => {
                out.push(&sql[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(&sql[start.min(sql.len())..]);
    out.into_iter().filter(|s| !s.trim().is_empty()).collect()
}

/// `s` without the blank space and comments (`-- ...` lines, `/* ... */`) it starts with.
fn skip_comments(mut s: &str) -> &str {
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.split_once('\n').map_or("", |(_, tail)| tail);
        } else if let Some(rest) = s.strip_prefix("/*") {
            s = rest.split_once("*/").map_or("", |(_, tail)| tail);
        } else {
            return s;
        }
    }
}

/// Next word (identifier, possibly quoted and schema-qualified) and the rest.
fn next_token(s: &str) -> Option<(String, &str)> {
    let s = s.trim_start();
    if s.is_empty() {
        return None;
    }
    let mut end = 0;
    let bytes = s.as_bytes();
    if bytes[0] == b'(' {
        let mut depth = 0;
        for (i, &c) in bytes.iter().enumerate() {
            match c {
                b'(' => depth += 1,
                b')' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some((s[..=i].to_string(), &s[i + 1..]));
                    }
                }
                _ => {}
            }
        }
        return None;
    }
    while end < bytes.len() && !bytes[end].is_ascii_whitespace() && bytes[end] != b'(' {
        if bytes[end] == b'"' {
            end += 1;
            while end < bytes.len() && bytes[end] != b'"' {
                end += 1;
            }
        }
        end += 1;
    }
    let end = end.min(bytes.len());
    Some((s[..end].to_string(), &s[end..]))
}

/// Unquoted last component of a possibly qualified, possibly quoted name.
fn bare_name(token: &str) -> String {
    let last = token.rsplit('.').next().unwrap_or(token);
    if last.starts_with('"') && last.ends_with('"') && last.len() >= 2 {
        last[1..last.len() - 1].replace("\"\"", "\"")
    } else {
        last.to_lowercase()
    }
}

/// `name` cut to PostgreSQL's identifier length (63 bytes, on a character boundary).
fn truncate_identifier(name: &str) -> String {
    let mut end = name.len().min(63);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

/// The SELECT of the `CREATE TABLE <table> AS SELECT ...` statement found in `sql`.
pub fn ctas_query(sql: &str, table: &str) -> Result<String, &'static str> {
    for statement in statements(sql) {
        let mut rest = skip_comments(statement);
        let mut words = Vec::new();
        // CREATE [UNLOGGED | TEMP | TEMPORARY] TABLE [IF NOT EXISTS] name [(columns)] AS
        while let Some((token, tail)) = next_token(rest) {
            rest = tail;
            let upper = token.to_uppercase();
            if upper == "AS" {
                break;
            }
            words.push(token);
            if words.len() > 8 {
                break;
            }
        }
        let upper: Vec<String> = words.iter().map(|w| w.to_uppercase()).collect();
        if upper.first().map(String::as_str) != Some("CREATE")
            || !upper.iter().any(|w| w == "TABLE")
        {
            continue;
        }
        let Some(name) = words
            .iter()
            .skip_while(|w| !w.eq_ignore_ascii_case("TABLE"))
            .skip(1)
            .find(|w| !["IF", "NOT", "EXISTS"].contains(&w.to_uppercase().as_str()))
        else {
            continue;
        };
        // PostgreSQL truncates a long name to 63 bytes; compare what it created.
        if truncate_identifier(&bare_name(name)) != table {
            continue;
        }
        if words.last().is_some_and(|w| w.starts_with('(')) {
            return Err("a column list");
        }
        let mut query = rest.trim().to_string();
        for suffix in ["WITH NO DATA", "WITH DATA"] {
            let upper = query.to_uppercase();
            let normalized: String = upper.split_whitespace().collect::<Vec<_>>().join(" ");
            if normalized.ends_with(suffix) {
                let cut = upper.rfind("WITH").unwrap_or(query.len());
                query.truncate(cut);
                query = query.trim().to_string();
            }
        }
        if query.is_empty() {
            return Err("an empty query");
        }
        return Ok(query);
    }
    Err("no matching CREATE TABLE ... AS statement")
}

/// Event trigger body for `CREATE TABLE tv_x AS ...`: turns the plain table into a TVIEW, in the
/// schema it was created in.
#[pg_extern(volatile, parallel_unsafe)]
fn _pg_tviews_adopt_ctas(table_oid: pg_sys::Oid, current_query: &str) {
    if tview::busy() {
        return;
    }
    let Ok((Some(schema), Some(name))) = Spi::get_two_with_args::<String, String>(
        "SELECT n.nspname::text, c.relname::text FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.oid = $1 AND c.relkind = 'r' AND c.relname LIKE 'tv\\_%'",
        &[table_oid.into()],
    ) else {
        return;
    };
    let query = ctas_query(current_query, &name).unwrap_or_else(|why| {
        raise(
            Code::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("cannot turn CREATE TABLE {name} AS into a TVIEW: it has {why}"),
            Some("Tables named tv_* are TVIEWs; pg_tviews_bgw never leaves a plain table under such a name."),
            Some(&format!("Use SELECT pg_tviews_create('{name}', $$<query>$$);")),
        )
    });
    let qualified = format!("{}.{}", quote_identifier(&schema), quote_identifier(&name));
    let _busy = tview::BusyGuard::enter();
    Spi::run(&format!("DROP TABLE {qualified}"))
        .unwrap_or_else(|e| raise(Code::ERRCODE_INTERNAL_ERROR, format!("{e}"), None, None));
    super::create::create(&qualified, &query, None);
}

/// Event trigger body for `DROP TABLE`: if a TVIEW table went, drop its view, triggers, metadata.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, @extschema@)]
fn _pg_tviews_forget(table_oid: pg_sys::Oid) {
    if tview::busy() {
        return;
    }
    // Every DROP TABLE comes here, also from sessions whose search_path lacks the extension's
    // schema, and from REFRESH MATERIALIZED VIEW CONCURRENTLY (it drops a temporary table),
    // which PostgreSQL 17+ runs with search_path = pg_catalog, pg_temp. This function pins its
    // path, but the schema of an older version it may serve does not: pin it here as well.
    let _path = crate::catalog::PinnedSearchPath::enter();
    // Only after the table is really gone (this runs from sql_drop): called directly on a live
    // TVIEW it does nothing.
    let Ok(Some(entity)) = Spi::get_one_with_args::<String>(
        "SELECT entity FROM pg_tview_meta m WHERE table_oid = $1 \
         AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = m.table_oid)",
        &[table_oid.into()],
    ) else {
        return;
    };
    let _busy = tview::BusyGuard::enter();
    tview::drop_objects(&entity, false);
}

/// Event trigger body for `DROP TABLE` of a table carrying a TVIEW's capture trigger but not a
/// source itself (a partition of a partitioned source): its rows left the source without any
/// DML, so the TVIEW is recomputed in full.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, @extschema@)]
fn _pg_tviews_trigger_dropped(trigger_name: &str) {
    if tview::busy() {
        return;
    }
    // A family trigger (api::triggers) names no TVIEW, and its table is gone: every TVIEW over
    // a partitioned source, the only tables whose triggers go with a dropped partition.
    let family = super::triggers::family_name(trigger_name);
    let tviews = Spi::get_one_with_args::<Vec<pg_sys::Oid>>(
        "SELECT coalesce(array_agg(m.table_oid::oid), '{}') FROM pg_tview_meta m \
         WHERE (CASE WHEN $2 THEN EXISTS (SELECT 1 FROM unnest(m.dependencies) d(oid) \
                                          JOIN pg_catalog.pg_class s ON s.oid = d.oid WHERE s.relkind = 'p') \
                     ELSE $1 LIKE 'tview\\_' || m.entity || '\\_%' END) \
           AND EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = m.table_oid)",
        &[trigger_name.into(), family.into()],
    )
    .ok()
    .flatten()
    .unwrap_or_default();
    for tview in tviews {
        refresh_whole(tview);
    }
}

/// Queues (or, without the queue, runs) a refresh of every row of a TVIEW.
fn refresh_whole(tview: pg_sys::Oid) {
    let sync = Spi::get_one_with_args::<bool>(
        "SELECT mode = 'sync' FROM pg_tview_meta WHERE table_oid = $1",
        &[tview.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false);
    crate::capture::enqueue(
        vec![crate::capture::staging::StagedKey {
            tview_oid: tview.to_u32(),
            kind: crate::queue::kind::FULL,
            key: 0,
        }],
        sync,
    );
}

/// Event trigger body for `CREATE TABLE` and `ALTER TABLE` (`ddl_command_end`): when the table
/// is, or belongs to the partition tree of, a partitioned TVIEW source, give every partition
/// its `_trunc` trigger (statement triggers are not cloned; the row trigger is), and recompute
/// the TVIEW after `ALTER TABLE` on the partitioned source itself (`ATTACH PARTITION` of a
/// filled table and `DETACH PARTITION` move rows in or out without any DML). Only the new
/// partitions are touched, which the user running the DDL owns.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, @extschema@)]
fn _pg_tviews_partitions_changed(table_oid: pg_sys::Oid, command_tag: &str) {
    if tview::busy() {
        return;
    }
    let affected = Spi::connect(|client| {
        let rows = client.select(
            "SELECT m.table_oid, s.oid \
             FROM pg_tview_meta m CROSS JOIN unnest(m.dependencies) s(oid) \
             JOIN pg_catalog.pg_class c ON c.oid = s.oid \
             WHERE c.relkind = 'p' \
               AND (s.oid = $1 OR s.oid IN (SELECT relid FROM pg_catalog.pg_partition_ancestors($1)))",
            None,
            &[table_oid.into()],
        )?;
        let mut out = Vec::new();
        for row in rows {
            out.push((
                row.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                row.get::<pg_sys::Oid>(2)?.unwrap_or(pg_sys::InvalidOid),
            ));
        }
        Ok::<_, spi::Error>(out)
    })
    .unwrap_or_default();
    if affected.is_empty() {
        return;
    }
    let _busy = tview::BusyGuard::enter();
    let mut refreshed = Vec::new();
    let mut covered = Vec::new();
    for (tview, source) in affected {
        if !covered.contains(&source) {
            covered.push(source);
            super::triggers::cover_partitions(source);
        }
        if source == table_oid && command_tag == "ALTER TABLE" && !refreshed.contains(&tview) {
            refreshed.push(tview);
            refresh_whole(tview);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_query_of_a_ctas() {
        let sql = "CREATE TABLE tv_post AS SELECT pk_post, jsonb_build_object('a', 1) AS data FROM tb_post;";
        assert_eq!(
            ctas_query(sql, "tv_post").unwrap(),
            "SELECT pk_post, jsonb_build_object('a', 1) AS data FROM tb_post"
        );
    }

    #[test]
    fn handles_multiple_statements_quotes_and_with_data() {
        let sql = "SELECT 'CREATE TABLE tv_post AS nope;'; create table if not exists public.\"tv_post\"\n  as\n select 1 as pk_post, $x$;$x$ as data from t WITH NO DATA; SELECT 2";
        assert_eq!(
            ctas_query(sql, "tv_post").unwrap(),
            "select 1 as pk_post, $x$;$x$ as data from t"
        );
    }

    #[test]
    fn finds_a_ctas_behind_comments() {
        let sql = "SELECT 1; -- the read model\n/* of posts */ CREATE TABLE app.tv_post AS SELECT 1 AS pk_post";
        assert_eq!(ctas_query(sql, "tv_post").unwrap(), "SELECT 1 AS pk_post");
    }

    #[test]
    fn compares_names_as_postgres_truncates_them() {
        let long = format!("tv_{}", "x".repeat(70));
        let sql = format!("CREATE TABLE {long} AS SELECT 1 AS pk, '{{}}'::jsonb AS data");
        assert!(ctas_query(&sql, &long[..63]).is_ok());
    }

    #[test]
    fn rejects_column_lists_and_unknown_tables() {
        assert_eq!(
            ctas_query("CREATE TABLE tv_a (x, y) AS SELECT 1, 2", "tv_a"),
            Err("a column list")
        );
        assert!(ctas_query("CREATE TABLE tv_b AS SELECT 1", "tv_a").is_err());
    }
}

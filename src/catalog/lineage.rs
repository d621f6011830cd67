//! Lineage planning: for each table a TVIEW's view reads, how a changed row of that table maps to
//! TVIEW keys (DESIGN §5). Pure Rust over catalog facts gathered by `api::tview`, so every case is
//! unit-tested; used in user backends at TVIEW creation.
//!
//! The source tables of a view and the single-column integer references between them (foreign
//! keys, or the `fk_<x>` -> `pk_<x>` naming convention) form a graph. For a source table S, every
//! simple path (up to [`MAX_HOPS`] references, in either direction) from the root table to S is a
//! way S can feed TVIEW rows: a parent embedded through `fk_x`, children aggregated into the
//! parent, multi-hop chains, a comment's author inside a post. The union over all paths can only
//! over-approximate the affected keys, which is safe because refresh is idempotent. A source with
//! no path falls back to a full refresh of the TVIEW, and creation warns.
//!
//! What a trigger on S captures is the S-side column of the path's last reference: its values are
//! TVIEW keys directly when the path is a single reference into the root key (a child's
//! `fk_<root>`, or the root key itself); otherwise the worker resolves them with a join from the
//! root (`resolve_sql`, `$1 bigint[]` -> TVIEW keys).

use std::collections::BTreeMap;

/// Longest reference chain considered between the root and a source table.
pub const MAX_HOPS: usize = 4;
/// Upper bound on paths per source table, so a dense schema cannot explode creation time.
const MAX_PATHS: usize = 32;

/// `from_table.from_column -> to_table.to_column`. Column names are raw (unquoted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edge {
    pub from_table: u32,
    pub from_column: String,
    pub to_table: u32,
    pub to_column: String,
}

/// `qualified` is already quoted for SQL (from `regclass::text`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub oid: u32,
    pub qualified: String,
}

/// How the values of one captured column of a source table become TVIEW keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capture {
    /// Column of the source table read from the transition tables (raw name).
    pub column: String,
    /// Query mapping `$1 bigint[]` of captured values to TVIEW keys; `None` when the values
    /// already are TVIEW keys.
    pub resolve_sql: Option<String>,
    /// Human-readable paths, for `pg_tview_lineage.description`.
    pub description: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    Captures(Vec<Capture>),
    /// No lineage: any change recomputes the whole TVIEW.
    Full {
        reason: String,
    },
}

/// Always-quoted SQL identifier.
fn q(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// One step of a path: from the current table to `to`, joined on `here = there`.
#[derive(Clone, Debug)]
struct Step {
    to: u32,
    here: String,
    there: String,
}

fn paths(edges: &[Edge], from: u32, goal: u32) -> Vec<Vec<Step>> {
    fn walk(
        edges: &[Edge],
        at: u32,
        goal: u32,
        visited: &mut Vec<u32>,
        path: &mut Vec<Step>,
        out: &mut Vec<Vec<Step>>,
    ) {
        if out.len() >= MAX_PATHS {
            return;
        }
        if at == goal && !path.is_empty() {
            out.push(path.clone());
            return;
        }
        if path.len() == MAX_HOPS {
            return;
        }
        for e in edges.iter().filter(|e| e.from_table != e.to_table) {
            let step = if e.from_table == at {
                Step {
                    to: e.to_table,
                    here: e.from_column.clone(),
                    there: e.to_column.clone(),
                }
            } else if e.to_table == at {
                Step {
                    to: e.from_table,
                    here: e.to_column.clone(),
                    there: e.from_column.clone(),
                }
            } else {
                continue;
            };
            if visited.contains(&step.to) {
                continue;
            }
            visited.push(step.to);
            path.push(step);
            walk(edges, path.last().unwrap().to, goal, visited, path, out);
            path.pop();
            visited.pop();
        }
    }
    let mut out = Vec::new();
    walk(
        edges,
        from,
        goal,
        &mut vec![from],
        &mut Vec::new(),
        &mut out,
    );
    out
}

/// How the definition reads its root table besides the row of the key itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RootReads {
    /// Range table entries reading the root (2 or more: a self-join, a correlated subquery
    /// over other rows of the root).
    pub count: u32,
    /// The definition is `WITH RECURSIVE`: a self-reference may be followed to any depth.
    pub recursive: bool,
}

impl RootReads {
    #[cfg(test)]
    pub const ONCE: RootReads = RootReads {
        count: 1,
        recursive: false,
    };
}

/// The keys a change to root rows `$1` (their keys, or their parents' keys) can reach along
/// the self-references `self_edges` (`fk_parent -> pk`): ancestors and descendants, up to
/// `hops` references each way, or without bound (cycles end by UNION's de-duplication).
fn self_closure_sql(root: &Table, key: &str, self_edges: &[&Edge], hops: Option<u32>) -> String {
    let k = q(key);
    let parents = self_edges
        .iter()
        .map(|e| format!("t.{}", q(&e.from_column)))
        .collect::<Vec<_>>()
        .join(", ");
    let child_of = self_edges
        .iter()
        .map(|e| format!("t.{} = down.k", q(&e.from_column)))
        .collect::<Vec<_>>()
        .join(" OR ");
    let (cols, base_depth, step, bound) = match hops {
        Some(h) => ("k, d", ", 0", ", d + 1", format!(" AND d < {h}")),
        None => ("k", "", "", String::new()),
    };
    format!(
        "WITH RECURSIVE up({cols}) AS (SELECT v{base_depth} FROM unnest($1::bigint[]) v \
         UNION SELECT p.k{step} FROM {root} t JOIN up ON t.{k} = up.k, \
         LATERAL unnest(ARRAY[{parents}]::bigint[]) p(k) WHERE p.k IS NOT NULL{bound}), \
         down({cols}) AS (SELECT v{base_depth} FROM unnest($1::bigint[]) v \
         UNION SELECT t.{k}::bigint{step} FROM {root} t JOIN down ON ({child_of}){bound}) \
         SELECT k FROM up UNION SELECT k FROM down",
        root = root.qualified,
    )
}

/// The root's own lineage: its key, plus its self-references when the definition reads other
/// rows of the root too.
fn plan_root(root: &Table, key: &str, edges: &[Edge], reads: RootReads) -> Plan {
    let own = Capture {
        column: key.to_string(),
        resolve_sql: None,
        description: format!("root {}.{key}", root.qualified),
    };
    if reads.count <= 1 {
        return Plan::Captures(vec![own]);
    }
    let self_edges: Vec<&Edge> = edges
        .iter()
        .filter(|e| e.from_table == root.oid && e.to_table == root.oid && e.to_column == key)
        .collect();
    if self_edges.is_empty() {
        return Plan::Full {
            reason: format!(
                "the query reads {} {} times, and it has no self-reference (fk_<x> -> {key}) that says which other rows a change reaches",
                root.qualified, reads.count
            ),
        };
    }
    let hops = (!reads.recursive).then_some(reads.count - 1);
    let sql = self_closure_sql(root, key, &self_edges, hops);
    let reach = match hops {
        Some(h) => format!("up to {h} reference(s) up and down"),
        None => "any number of references up and down (WITH RECURSIVE)".to_string(),
    };
    let mut captures = vec![Capture {
        resolve_sql: Some(sql.clone()),
        description: format!(
            "{}; self-reference: the changed row's ancestors and descendants, {reach}",
            own.description
        ),
        ..own
    }];
    for edge in &self_edges {
        captures.push(Capture {
            column: edge.from_column.clone(),
            resolve_sql: Some(sql.clone()),
            description: format!(
                "self-reference {}.{} = {}.{key}: old and new parents and their relatives, {reach}",
                root.qualified, edge.from_column, root.qualified
            ),
        });
    }
    Plan::Captures(captures)
}

/// Plans how changes to `source` reach the TVIEW rooted at `root` with key column `key` (the
/// root table's column that TVIEW keys are selected from).
pub fn plan(
    root: &Table,
    key: &str,
    source: &Table,
    tables: &[Table],
    edges: &[Edge],
    root_reads: RootReads,
) -> Plan {
    let name = |oid: u32| {
        tables
            .iter()
            .find(|t| t.oid == oid)
            .map_or_else(|| oid.to_string(), |t| t.qualified.clone())
    };
    if source.oid == root.oid {
        return plan_root(root, key, edges, root_reads);
    }
    // Per captured column: whether some path makes its values TVIEW keys directly, the resolve
    // queries of the other paths, and the descriptions.
    let mut by_column: BTreeMap<String, (bool, Vec<String>, Vec<String>)> = BTreeMap::new();
    for path in paths(edges, root.oid, source.oid) {
        let last = path.last().expect("paths are non-empty");
        let entry = by_column.entry(last.there.clone()).or_default();
        let mut description = root.qualified.clone();
        for step in &path {
            description.push_str(&format!(
                ".{} = {}.{}",
                step.here,
                name(step.to),
                step.there
            ));
        }
        entry.2.push(description);
        if path.len() == 1 && last.here == key {
            entry.0 = true;
            continue;
        }
        let mut sql = format!("SELECT t0.{}::bigint FROM {} t0", q(key), root.qualified);
        for (i, step) in path.iter().enumerate().take(path.len() - 1) {
            sql.push_str(&format!(
                " JOIN {} t{j} ON t{i}.{} = t{j}.{}",
                name(step.to),
                q(&step.here),
                q(&step.there),
                j = i + 1
            ));
        }
        sql.push_str(&format!(
            " WHERE t{}.{} = ANY($1)",
            path.len() - 1,
            q(&last.here)
        ));
        entry.1.push(sql);
    }
    if by_column.is_empty() {
        return Plan::Full {
            reason: format!(
                "no foreign key path of at most {MAX_HOPS} references links {} to {}",
                source.qualified, root.qualified
            ),
        };
    }
    let captures = by_column
        .into_iter()
        .map(|(column, (direct, queries, descriptions))| {
            let resolve_sql = if queries.is_empty() {
                None
            } else {
                let mut parts = queries;
                if direct {
                    parts.insert(0, "SELECT unnest($1::bigint[])".to_string());
                }
                Some(parts.join(" UNION "))
            };
            Capture {
                column,
                resolve_sql,
                description: descriptions.join("; "),
            }
        })
        .collect();
    Plan::Captures(captures)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POST: u32 = 1;
    const USER: u32 = 2;
    const COMMENT: u32 = 3;
    const COMPANY: u32 = 4;
    const LIKE: u32 = 5;
    const TAG: u32 = 6;

    fn t(oid: u32, name: &str) -> Table {
        Table {
            oid,
            qualified: name.to_string(),
        }
    }

    fn e(from: u32, fc: &str, to: u32, tc: &str) -> Edge {
        Edge {
            from_table: from,
            from_column: fc.into(),
            to_table: to,
            to_column: tc.into(),
        }
    }

    fn tables() -> Vec<Table> {
        vec![
            t(POST, "tb_post"),
            t(USER, "tb_user"),
            t(COMMENT, "tb_comment"),
            t(COMPANY, "tb_company"),
            t(LIKE, "tb_like"),
            t(TAG, "tb_tag"),
        ]
    }

    /// posts have an author; comments belong to a post and have an author; users work for a
    /// company; likes belong to a comment.
    fn edges() -> Vec<Edge> {
        vec![
            e(POST, "fk_user", USER, "pk_user"),
            e(USER, "fk_company", COMPANY, "pk_company"),
            e(COMMENT, "fk_post", POST, "pk_post"),
            e(COMMENT, "fk_user", USER, "pk_user"),
            e(LIKE, "fk_comment", COMMENT, "pk_comment"),
        ]
    }

    fn plan_for(source: u32, edges: &[Edge]) -> Vec<Capture> {
        let tables = tables();
        let source = tables.iter().find(|x| x.oid == source).unwrap().clone();
        match plan(
            &tables[0],
            "pk_post",
            &source,
            &tables,
            edges,
            RootReads::ONCE,
        ) {
            Plan::Captures(c) => c,
            Plan::Full { reason } => panic!("unexpected full refresh: {reason}"),
        }
    }

    #[test]
    fn root_keys_are_tview_keys() {
        let c = plan_for(POST, &edges());
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].column.as_str(), c[0].resolve_sql.as_deref()),
            ("pk_post", None)
        );
    }

    #[test]
    fn child_foreign_key_values_are_tview_keys() {
        let c = plan_for(COMMENT, &[e(COMMENT, "fk_post", POST, "pk_post")]);
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].column.as_str(), c[0].resolve_sql.as_deref()),
            ("fk_post", None)
        );
    }

    #[test]
    fn parent_is_resolved_through_the_root_foreign_key() {
        let c = plan_for(USER, &[e(POST, "fk_user", USER, "pk_user")]);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].column, "pk_user");
        assert_eq!(
            c[0].resolve_sql.as_deref(),
            Some(r#"SELECT t0."pk_post"::bigint FROM tb_post t0 WHERE t0."fk_user" = ANY($1)"#)
        );
    }

    #[test]
    fn a_parent_reached_two_ways_resolves_through_both() {
        // A user is a post's author and also the author of comments embedded in posts.
        let c = plan_for(USER, &edges());
        assert_eq!(c.len(), 1);
        let sql = c[0].resolve_sql.as_deref().unwrap();
        assert!(
            sql.contains(r#"FROM tb_post t0 WHERE t0."fk_user" = ANY($1)"#),
            "{sql}"
        );
        assert!(
            sql.contains(r#"FROM tb_post t0 JOIN tb_comment t1 ON t0."pk_post" = t1."fk_post" WHERE t1."fk_user" = ANY($1)"#),
            "{sql}"
        );
        assert!(sql.contains(" UNION "));
    }

    #[test]
    fn grandparent_chain_joins_from_the_root() {
        let c = plan_for(
            COMPANY,
            &[
                e(POST, "fk_user", USER, "pk_user"),
                e(USER, "fk_company", COMPANY, "pk_company"),
            ],
        );
        assert_eq!(c[0].column, "pk_company");
        assert_eq!(
            c[0].resolve_sql.as_deref(),
            Some(
                r#"SELECT t0."pk_post"::bigint FROM tb_post t0 JOIN tb_user t1 ON t0."fk_user" = t1."pk_user" WHERE t1."fk_company" = ANY($1)"#
            )
        );
    }

    #[test]
    fn grandchild_chain_resolves_through_the_child() {
        let c = plan_for(
            LIKE,
            &[
                e(COMMENT, "fk_post", POST, "pk_post"),
                e(LIKE, "fk_comment", COMMENT, "pk_comment"),
            ],
        );
        assert_eq!(c[0].column, "fk_comment");
        assert_eq!(
            c[0].resolve_sql.as_deref(),
            Some(
                r#"SELECT t0."pk_post"::bigint FROM tb_post t0 JOIN tb_comment t1 ON t0."pk_post" = t1."fk_post" WHERE t1."pk_comment" = ANY($1)"#
            )
        );
    }

    #[test]
    fn a_child_that_is_also_reached_indirectly_keeps_its_direct_keys() {
        // Comments are children of the post, and also reachable through the post's author.
        let c = plan_for(COMMENT, &edges());
        let fk_post = c
            .iter()
            .find(|c| c.column == "fk_post")
            .expect("direct child capture");
        assert_eq!(fk_post.resolve_sql, None);
        let fk_user = c
            .iter()
            .find(|c| c.column == "fk_user")
            .expect("author path");
        assert!(fk_user.resolve_sql.as_deref().unwrap().contains(
            r#"JOIN tb_user t1 ON t0."fk_user" = t1."pk_user" WHERE t1."pk_user" = ANY($1)"#
        ));
    }

    #[test]
    fn unrelated_table_falls_back_to_full_refresh() {
        let tables = tables();
        let tag = tables.iter().find(|x| x.oid == TAG).unwrap().clone();
        assert!(matches!(
            plan(&tables[0], "pk_post", &tag, &tables, &edges(), RootReads::ONCE),
            Plan::Full { reason } if reason.contains("tb_tag")
        ));
    }

    #[test]
    fn a_root_read_twice_follows_its_self_reference_both_ways() {
        let tables = vec![t(POST, "tb_post")];
        let parent = [e(POST, "fk_parent_post", POST, "pk_post")];
        let reads = RootReads {
            count: 2,
            recursive: false,
        };
        let Plan::Captures(c) = plan(&tables[0], "pk_post", &tables[0], &tables, &parent, reads)
        else {
            panic!("expected captures");
        };
        let columns: Vec<&str> = c.iter().map(|c| c.column.as_str()).collect();
        assert_eq!(columns, ["pk_post", "fk_parent_post"]);
        let sql = c[0].resolve_sql.as_deref().unwrap();
        assert_eq!(c[1].resolve_sql.as_deref(), Some(sql));
        assert!(sql.contains(r#"JOIN up ON t."pk_post" = up.k"#), "{sql}");
        assert!(sql.contains(r#"ARRAY[t."fk_parent_post"]"#), "{sql}");
        assert!(
            sql.contains(r#"JOIN down ON (t."fk_parent_post" = down.k) AND d < 1"#),
            "{sql}"
        );
        // Read once, the same table needs only its own key.
        let Plan::Captures(once) = plan(
            &tables[0],
            "pk_post",
            &tables[0],
            &tables,
            &parent,
            RootReads::ONCE,
        ) else {
            panic!("expected captures");
        };
        assert_eq!(once.len(), 1);
        assert_eq!(once[0].resolve_sql, None);
    }

    #[test]
    fn a_recursive_definition_follows_the_self_reference_without_bound() {
        let tables = vec![t(POST, "tb_post")];
        let parent = [e(POST, "fk_parent_post", POST, "pk_post")];
        let reads = RootReads {
            count: 3,
            recursive: true,
        };
        let Plan::Captures(c) = plan(&tables[0], "pk_post", &tables[0], &tables, &parent, reads)
        else {
            panic!("expected captures");
        };
        let sql = c[0].resolve_sql.as_deref().unwrap();
        assert!(!sql.contains(" d < "), "{sql}");
        assert!(sql.starts_with("WITH RECURSIVE up(k) AS"), "{sql}");
    }

    #[test]
    fn a_root_read_twice_without_a_self_reference_refreshes_in_full() {
        let tables = tables();
        let reads = RootReads {
            count: 2,
            recursive: false,
        };
        assert!(matches!(
            plan(&tables[0], "pk_post", &tables[0], &tables, &edges(), reads),
            Plan::Full { reason } if reason.contains("2 times")
        ));
    }

    #[test]
    fn paths_are_simple_and_bounded() {
        // A fully connected graph of 6 tables must not loop or explode.
        let tables = tables();
        let mut dense = Vec::new();
        for a in &tables {
            for b in &tables {
                if a.oid != b.oid {
                    dense.push(e(a.oid, &format!("fk_{}", b.oid), b.oid, "pk"));
                }
            }
        }
        let found = paths(&dense, POST, TAG);
        assert!(!found.is_empty() && found.len() <= MAX_PATHS);
        assert!(found.iter().all(|p| p.len() <= MAX_HOPS));
    }
}

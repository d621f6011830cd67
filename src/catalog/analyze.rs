//! Creation-time analysis of a TVIEW's backing view: walks the whole query tree (every range
//! table entry, sublink, CTE, set operation, function call, and the queries of nested views)
//! and reports what it reads, so `api::tview` can classify each read as captured or refused.
//! Runs in the creating user backend, inside its transaction.
//!
//! `pg_depend` alone is not enough: it records each relation once (no self-reference count),
//! and never built-in functions (so a `random()` would go unnoticed).

use pgrx::pg_sys;
use std::collections::BTreeMap;

/// One relation the definition reads, directly or through a nested view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    pub oid: u32,
    /// `pg_class.relkind`: `r`, `p`, `v`, `m`, `f`, ...
    pub relkind: u8,
    /// `pg_class.relpersistence`: `p`, `u`, `t`.
    pub persistence: u8,
    /// How many range table entries read it (2 or more for a self-join or a correlated
    /// subquery over the same table).
    pub count: u32,
}

#[derive(Debug, Default)]
pub struct Analysis {
    pub reads: Vec<Read>,
    /// Some query level is `WITH RECURSIVE`.
    pub recursive: bool,
    /// Some expression calls a volatile function (`random()`, `clock_timestamp()`, ...).
    pub volatile: bool,
    /// Every function called (directly, or as an operator's or aggregate's implementation).
    pub functions: Vec<u32>,
    /// The relation and attribute number the key column is selected from, when it is a plain
    /// column of a table (through joins and subqueries).
    pub key_origin: Option<(u32, i16)>,
    /// Relations read by a scalar, ARRAY or EXISTS subquery that refers to nothing of the
    /// query around it (`(SELECT max(votes) FROM tb_post)` in every row): a change to them
    /// reaches every row, whatever keys the schema's references would suggest.
    pub uncorrelated: Vec<u32>,
}

#[derive(Default)]
struct Walk {
    reads: BTreeMap<u32, Read>,
    recursive: bool,
    volatile: bool,
    functions: Vec<u32>,
    /// Views being walked, innermost last (their own OLD/NEW placeholder entries in PostgreSQL
    /// 15's stored rules read the view itself; a view is never walked inside itself).
    views: Vec<u32>,
    /// Inside an uncorrelated subquery (see `Analysis::uncorrelated`).
    in_uncorrelated: bool,
    uncorrelated: std::collections::BTreeSet<u32>,
}

/// Items of a pointer `List`.
///
/// # Safety
/// `list` is NULL or a valid pointer list.
unsafe fn list_ptrs<T>(list: *mut pg_sys::List) -> Vec<*mut T> {
    if list.is_null() {
        return Vec::new();
    }
    // SAFETY: a non-NULL List has `length` initialised cells.
    unsafe {
        let n = (*list).length as usize;
        (0..n)
            .map(|i| (*(*list).elements.add(i)).ptr_value as *mut T)
            .collect()
    }
}

/// # Safety
/// `node` is NULL or a valid node.
unsafe fn tag(node: *mut pg_sys::Node) -> pg_sys::NodeTag {
    if node.is_null() {
        pg_sys::NodeTag::T_Invalid
    } else {
        // SAFETY: every node starts with its tag.
        unsafe { (*node).type_ }
    }
}

/// The stored query of view `oid` (a copy in the current memory context).
///
/// # Safety
/// Must run inside a transaction; `oid` is a view.
unsafe fn view_query(oid: pg_sys::Oid) -> *mut pg_sys::Query {
    // SAFETY: the view exists (it was just created or is read by one); the lock is kept until
    // the end of the transaction, like any reader's; the rule's query lives in the relcache, so
    // it is copied before the relation is closed.
    unsafe {
        let rel = pg_sys::relation_open(oid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let query = pg_sys::get_view_query(rel);
        let copy = pg_sys::copyObjectImpl(query as *const std::ffi::c_void) as *mut pg_sys::Query;
        pg_sys::relation_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        copy
    }
}

impl Walk {
    /// # Safety
    /// `query` is a valid Query.
    unsafe fn query(&mut self, query: *mut pg_sys::Query) {
        // SAFETY: per the caller; the walker only reads the tree (set_opfuncid fills a cache
        // field of our own copy).
        unsafe {
            if (*query).hasRecursive {
                self.recursive = true;
            }
            if pg_sys::contain_volatile_functions(query as *mut pg_sys::Node) {
                self.volatile = true;
            }
            pg_sys::query_tree_walker(
                query,
                Some(walker),
                self as *mut Walk as *mut std::ffi::c_void,
                pg_sys::QTW_EXAMINE_RTES_BEFORE as i32,
            );
        }
    }

    /// # Safety
    /// `rte` is a valid range table entry.
    unsafe fn relation(&mut self, rte: *mut pg_sys::RangeTblEntry) {
        // SAFETY: per the caller; catalog lookups by OID inside the transaction.
        unsafe {
            let oid = (*rte).relid;
            if self.views.contains(&oid.to_u32()) {
                return;
            }
            let relkind = (*rte).relkind as u8;
            let read = self.reads.entry(oid.to_u32()).or_insert_with(|| Read {
                oid: oid.to_u32(),
                relkind,
                persistence: pg_sys::get_rel_persistence(oid) as u8,
                count: 0,
            });
            read.count += 1;
            if self.in_uncorrelated {
                self.uncorrelated.insert(oid.to_u32());
            }
            if relkind == pg_sys::RELKIND_VIEW && self.views.len() < 32 {
                self.views.push(oid.to_u32());
                self.query(view_query(oid));
                self.views.pop();
            }
        }
    }
}

/// Tree walker callback for `expression_tree_walker` / `query_tree_walker`.
///
/// # Safety
/// Called by PostgreSQL's walkers only: `node` is NULL or a valid node, `context` the
/// `Reads` passed to the walk.
unsafe extern "C-unwind" fn walker(
    node: *mut pg_sys::Node,
    context: *mut std::ffi::c_void,
) -> bool {
    // SAFETY: PostgreSQL's tree walkers pass valid nodes (or NULL) and our context pointer.
    unsafe {
        let walk = &mut *(context as *mut Walk);
        match tag(node) {
            pg_sys::NodeTag::T_Invalid => return false,
            pg_sys::NodeTag::T_Query => {
                walk.query(node as *mut pg_sys::Query);
                return false;
            }
            pg_sys::NodeTag::T_RangeTblEntry => {
                let rte = node as *mut pg_sys::RangeTblEntry;
                if (*rte).rtekind == pg_sys::RTEKind::RTE_RELATION {
                    walk.relation(rte);
                }
                // With QTW_EXAMINE_RTES_BEFORE the walker descends into the entry itself.
                return false;
            }
            pg_sys::NodeTag::T_SubLink => {
                // A subquery whose result is the same for every row of the queries around it
                // (no Var of any enclosing level, and not a comparison with one).
                let link = node as *mut pg_sys::SubLink;
                let constant = matches!(
                    (*link).subLinkType,
                    pg_sys::SubLinkType::EXPR_SUBLINK
                        | pg_sys::SubLinkType::ARRAY_SUBLINK
                        | pg_sys::SubLinkType::EXISTS_SUBLINK
                ) && !(1..=8)
                    .any(|level| pg_sys::contain_vars_of_level((*link).subselect, level));
                if constant && !walk.in_uncorrelated {
                    walk.in_uncorrelated = true;
                    let done = pg_sys::expression_tree_walker(node, Some(walker), context);
                    walk.in_uncorrelated = false;
                    return done;
                }
            }
            pg_sys::NodeTag::T_FuncExpr => {
                walk.functions
                    .push((*(node as *mut pg_sys::FuncExpr)).funcid.to_u32());
            }
            pg_sys::NodeTag::T_OpExpr
            | pg_sys::NodeTag::T_DistinctExpr
            | pg_sys::NodeTag::T_NullIfExpr => {
                let op = node as *mut pg_sys::OpExpr;
                pg_sys::set_opfuncid(op);
                walk.functions.push((*op).opfuncid.to_u32());
            }
            pg_sys::NodeTag::T_Aggref => {
                walk.functions
                    .push((*(node as *mut pg_sys::Aggref)).aggfnoid.to_u32());
            }
            pg_sys::NodeTag::T_WindowFunc => {
                walk.functions
                    .push((*(node as *mut pg_sys::WindowFunc)).winfnoid.to_u32());
            }
            _ => {}
        }
        pg_sys::expression_tree_walker(node, Some(walker), context)
    }
}

/// Where expression `expr` of `query` comes from: a table column, through joins, subqueries
/// and common table expressions of the FROM clause.
///
/// # Safety
/// `query` is a valid Query and `expr` one of its expressions.
unsafe fn origin(
    query: *mut pg_sys::Query,
    expr: *mut pg_sys::Node,
    depth: u32,
) -> Option<(u32, i16)> {
    // SAFETY: per the caller; only reads the tree.
    unsafe {
        if depth > 16 || tag(expr) != pg_sys::NodeTag::T_Var {
            return None;
        }
        let var = expr as *mut pg_sys::Var;
        if (*var).varlevelsup != 0 || (*var).varattno <= 0 {
            return None;
        }
        let rtable = list_ptrs::<pg_sys::RangeTblEntry>((*query).rtable);
        let rte = *rtable.get((*var).varno as usize - 1)?;
        let attno = (*var).varattno;
        match (*rte).rtekind {
            pg_sys::RTEKind::RTE_RELATION
                if (*rte).relkind as u8 == pg_sys::RELKIND_RELATION
                    || (*rte).relkind as u8 == pg_sys::RELKIND_PARTITIONED_TABLE =>
            {
                Some(((*rte).relid.to_u32(), attno))
            }
            pg_sys::RTEKind::RTE_JOIN => {
                let aliases = list_ptrs::<pg_sys::Node>((*rte).joinaliasvars);
                origin(query, *aliases.get(attno as usize - 1)?, depth + 1)
            }
            pg_sys::RTEKind::RTE_SUBQUERY => output_origin((*rte).subquery, attno, depth + 1),
            pg_sys::RTEKind::RTE_CTE if (*rte).ctelevelsup == 0 => {
                let name = std::ffi::CStr::from_ptr((*rte).ctename);
                let cte = list_ptrs::<pg_sys::CommonTableExpr>((*query).cteList)
                    .into_iter()
                    .find(|&c| std::ffi::CStr::from_ptr((*c).ctename) == name)?;
                let cte_query = (*cte).ctequery as *mut pg_sys::Query;
                if tag(cte_query as *mut pg_sys::Node) != pg_sys::NodeTag::T_Query {
                    return None;
                }
                output_origin(cte_query, attno, depth + 1)
            }
            _ => None,
        }
    }
}

/// Where output column `attno` of `query` comes from; for a set operation (UNION, and the two
/// terms of a recursive CTE) every arm must take it from the same table column.
///
/// # Safety
/// `query` is a valid Query.
unsafe fn output_origin(query: *mut pg_sys::Query, attno: i16, depth: u32) -> Option<(u32, i16)> {
    // SAFETY: per the caller; only reads the tree.
    unsafe {
        if depth > 16 {
            return None;
        }
        if !(*query).setOperations.is_null() {
            return setop_origin(query, (*query).setOperations, attno, depth + 1);
        }
        let tle = list_ptrs::<pg_sys::TargetEntry>((*query).targetList)
            .into_iter()
            .find(|&t| (*t).resno == attno)?;
        origin(query, (*tle).expr as *mut pg_sys::Node, depth + 1)
    }
}

/// # Safety
/// `query` is a valid Query whose `setOperations` tree contains `node`.
unsafe fn setop_origin(
    query: *mut pg_sys::Query,
    node: *mut pg_sys::Node,
    attno: i16,
    depth: u32,
) -> Option<(u32, i16)> {
    // SAFETY: per the caller; only reads the tree.
    unsafe {
        if depth > 32 {
            return None;
        }
        match tag(node) {
            pg_sys::NodeTag::T_SetOperationStmt => {
                let op = node as *mut pg_sys::SetOperationStmt;
                let left = setop_origin(query, (*op).larg, attno, depth + 1)?;
                let right = setop_origin(query, (*op).rarg, attno, depth + 1)?;
                (left == right).then_some(left)
            }
            pg_sys::NodeTag::T_RangeTblRef => {
                let index = (*(node as *mut pg_sys::RangeTblRef)).rtindex;
                let rte =
                    *list_ptrs::<pg_sys::RangeTblEntry>((*query).rtable).get(index as usize - 1)?;
                if (*rte).rtekind != pg_sys::RTEKind::RTE_SUBQUERY {
                    return None;
                }
                output_origin((*rte).subquery, attno, depth + 1)
            }
            _ => None,
        }
    }
}

/// Walks the query of view `view_oid`; `key` names the TVIEW's key column.
pub fn analyze(view_oid: pg_sys::Oid, key: &str) -> Analysis {
    let mut walk = Walk {
        views: vec![view_oid.to_u32()],
        ..Walk::default()
    };
    // SAFETY: called inside the creating transaction for a view it just created.
    let key_origin = unsafe {
        let query = view_query(view_oid);
        walk.query(query);
        list_ptrs::<pg_sys::TargetEntry>((*query).targetList)
            .into_iter()
            .find(|&t| {
                !(*t).resjunk
                    && !(*t).resname.is_null()
                    && std::ffi::CStr::from_ptr((*t).resname).to_bytes() == key.as_bytes()
            })
            .and_then(|t| origin(query, (*t).expr as *mut pg_sys::Node, 0))
    };
    let mut functions = walk.functions;
    functions.sort_unstable();
    functions.dedup();
    Analysis {
        reads: walk.reads.into_values().collect(),
        recursive: walk.recursive,
        volatile: walk.volatile,
        functions,
        key_origin,
        uncorrelated: walk.uncorrelated.into_iter().collect(),
    }
}

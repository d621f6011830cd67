//! Which TVIEW a capture trigger feeds: the first trigger argument, written by
//! `api::triggers` and read by the trigger function in user backends (and by the health check
//! and `pg_tviews_verify`, to tell a trigger bound elsewhere from a working one).
//!
//! A trigger argument is a string fixed at `CREATE TRIGGER`, and pg_dump copies it verbatim: an
//! oid in it would name a relation of the dumped database, not of the restored one. So the
//! argument carries the TVIEW table's qualified name beside its oid, and the name wins when it
//! resolves (a restore: new oid, same name); the oid stays for a TVIEW table renamed since.
//!
//! Forms: `<oid>` and `<oid>:sync` (0.1.0 to 0.3.0), `<oid>:<async|sync>:<schema>.<table>`
//! (the name as `format('%I.%I')` writes it).
//!
//! Argument lists: `pg_tviews_capture` (a trigger per TVIEW, 0.1.0 to 0.5.0) takes one TVIEW,
//! `(binding, column [, kind] [, column, kind]...)`; `pg_tviews_capture_source` (one trigger
//! family per source table, 0.6.0) takes every TVIEW that reads the table, each as a
//! [`Group`] `binding n column kind × n`, in **one** argument: the tokens separated by single
//! spaces, columns quoted as `%I` quotes them (an empty column is `""`). PostgreSQL copies
//! every argument of every trigger of a table at the start of each statement that writes it
//! (`CopyTriggerDesc`): as separate arguments, eight per TVIEW and five triggers, that copy
//! was about 4% of a single-row UPDATE with two TVIEWs, and grew with every TVIEW.

use pgrx::prelude::*;

/// A parsed first trigger argument.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Binding {
    /// The TVIEW table's oid when the trigger was created.
    pub oid: u32,
    /// The TVIEW is in sync mode (`pg_tviews_set_mode`).
    pub sync: bool,
    /// `(schema, table)`, unquoted; absent in triggers of 0.3.0 and earlier.
    pub name: Option<(String, String)>,
}

impl Binding {
    /// The argument for a trigger of TVIEW `oid`, whose table is `schema.table`.
    pub fn encode(oid: u32, sync: bool, schema: &str, table: &str) -> String {
        format!(
            "{oid}:{}:{}.{}",
            if sync { "sync" } else { "async" },
            quote(schema),
            quote(table)
        )
    }

    /// The argument this binding was parsed from (in the current form when it has a name).
    pub fn to_arg(&self) -> String {
        match &self.name {
            Some((schema, table)) => Binding::encode(self.oid, self.sync, schema, table),
            None => format!("{}:{}", self.oid, if self.sync { "sync" } else { "async" }),
        }
    }

    pub fn parse(arg: &str) -> Option<Binding> {
        let mut parts = arg.splitn(3, ':');
        let oid = parts.next()?.parse::<u32>().ok()?;
        let sync = match parts.next() {
            None | Some("async") => false,
            Some("sync") => true,
            Some(_) => return None,
        };
        let name = match parts.next() {
            None => None,
            Some(qualified) => Some(split_qualified(qualified)?),
        };
        Some(Binding { oid, sync, name })
    }

    /// The TVIEW table's oid in this database: the relation the name designates, else the
    /// recorded oid. Two syscache lookups; cannot raise.
    pub fn resolve(&self) -> u32 {
        let Some((schema, table)) = &self.name else {
            return self.oid;
        };
        let (Ok(schema), Ok(table)) = (
            std::ffi::CString::new(schema.as_str()),
            std::ffi::CString::new(table.as_str()),
        ) else {
            return self.oid;
        };
        // SAFETY: both strings are NUL-terminated and outlive the calls; with missing_ok the
        // namespace lookup returns InvalidOid instead of raising, and get_relname_relid only
        // probes the syscache.
        let relid = unsafe {
            let namespace = pg_sys::get_namespace_oid(schema.as_ptr(), true);
            if namespace == pg_sys::InvalidOid {
                pg_sys::InvalidOid
            } else {
                pg_sys::get_relname_relid(table.as_ptr(), namespace)
            }
        };
        if relid == pg_sys::InvalidOid {
            self.oid
        } else {
            relid.to_u32()
        }
    }
}

/// One TVIEW's part of a capture trigger's arguments: which TVIEW, and the columns of the
/// source whose values are its queue entries, each with its entry kind (see
/// `catalog::lineage`). An empty column means "any change here recomputes the whole TVIEW".
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Group {
    pub binding: Binding,
    pub columns: Vec<(String, u32)>,
}

impl Group {
    /// The group asks for whole-TVIEW refreshes only (a source without derived lineage).
    pub fn full_only(&self) -> bool {
        self.columns.iter().all(|(c, _)| c.is_empty())
    }

    /// The one argument of `pg_tviews_capture_source` for `groups`, unquoted (as text).
    pub fn encode_all(groups: &[Group]) -> String {
        let mut tokens = Vec::new();
        for group in groups {
            tokens.push(group.binding.to_arg());
            tokens.push(group.columns.len().to_string());
            for (column, kind) in &group.columns {
                tokens.push(quote(column));
                tokens.push(kind.to_string());
            }
        }
        tokens.join(" ")
    }

    /// Parses the arguments of `pg_tviews_capture_source`; `None` when malformed.
    pub fn parse_all<S: AsRef<str>>(args: &[S]) -> Option<Vec<Group>> {
        let [packed] = args else {
            return None;
        };
        let tokens = split_tokens(packed.as_ref())?;
        let mut groups = Vec::new();
        let mut rest = &tokens[..];
        while let [binding, n, tail @ ..] = rest {
            let binding = Binding::parse(binding)?;
            let n = n.parse::<usize>().ok()?;
            if tail.len() < 2 * n {
                return None;
            }
            let mut columns = Vec::with_capacity(n);
            for pair in tail[..2 * n].chunks(2) {
                columns.push((unquote(&pair[0])?, pair[1].parse::<u32>().ok()?));
            }
            groups.push(Group { binding, columns });
            rest = &tail[2 * n..];
        }
        (rest.is_empty() && !groups.is_empty()).then_some(groups)
    }

    /// Parses the arguments of `pg_tviews_capture` (one TVIEW); `None` when malformed. The
    /// two-argument form means kind ROW.
    pub fn parse_one<S: AsRef<str>>(args: &[S]) -> Option<Group> {
        let (binding, rest) = args.split_first()?;
        let binding = Binding::parse(binding.as_ref())?;
        let columns = match rest {
            [column] => vec![(column.as_ref().to_string(), crate::queue::kind::ROW)],
            pairs if pairs.len() % 2 == 0 && !pairs.is_empty() => {
                let mut columns = Vec::with_capacity(pairs.len() / 2);
                for pair in pairs.chunks(2) {
                    columns.push((
                        pair[0].as_ref().to_string(),
                        pair[1].as_ref().parse::<u32>().ok()?,
                    ));
                }
                columns
            }
            _ => return None,
        };
        Some(Group { binding, columns })
    }
}

/// `name` as `%I` quotes it: bare when it is a lower-case identifier, else double-quoted.
fn quote(name: &str) -> String {
    let bare = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if bare {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// Splits `packed` at the spaces outside double quotes; `None` for an empty token or an
/// unterminated quote.
fn split_tokens(packed: &str) -> Option<Vec<String>> {
    let mut tokens = Vec::new();
    let mut token = String::new();
    let mut quoted = false;
    for c in packed.chars() {
        match c {
            '"' => {
                // A doubled quote inside a quoted part toggles twice: it stays quoted.
                quoted = !quoted;
                token.push(c);
            }
            ' ' if !quoted => tokens.push(std::mem::take(&mut token)),
            c => token.push(c),
        }
    }
    tokens.push(token);
    (!quoted && tokens.iter().all(|t| !t.is_empty())).then_some(tokens)
}

/// The name `quote` wrote: bare, or double-quoted with doubled inner quotes; `None` otherwise.
fn unquote(token: &str) -> Option<String> {
    let Some(inner) = token.strip_prefix('"') else {
        return (!token.contains('"')).then(|| token.to_string());
    };
    let inner = inner.strip_suffix('"')?;
    let mut name = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '"' && chars.next() != Some('"') {
            return None;
        }
        name.push(c);
    }
    Some(name)
}

/// Splits `schema.table` (each part bare or double-quoted) into its unquoted parts.
fn split_qualified(qualified: &str) -> Option<(String, String)> {
    let mut parts = Vec::new();
    let mut chars = qualified.chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    '"' => break,
                    c => part.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                part.push(c);
                chars.next();
            }
        }
        if part.is_empty() {
            return None;
        }
        parts.push(part);
        match chars.next() {
            None => break,
            Some('.') => continue,
            Some(_) => return None,
        }
    }
    match <[String; 2]>::try_from(parts) {
        Ok([schema, table]) => Some((schema, table)),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_argument_form_parses() {
        assert_eq!(
            Binding::parse("16384"),
            Some(Binding {
                oid: 16384,
                sync: false,
                name: None
            })
        );
        assert_eq!(
            Binding::parse("16384:sync"),
            Some(Binding {
                oid: 16384,
                sync: true,
                name: None
            })
        );
        assert_eq!(
            Binding::parse("16384:async:public.tv_post"),
            Some(Binding {
                oid: 16384,
                sync: false,
                name: Some(("public".into(), "tv_post".into()))
            })
        );
        assert_eq!(Binding::parse("x"), None);
        assert_eq!(Binding::parse("1:fast"), None);
        assert_eq!(Binding::parse("1:sync:tv_post"), None);
    }

    #[test]
    fn groups_round_trip() {
        let a = Group {
            binding: Binding::parse("7:async:public.tv_a").unwrap(),
            columns: vec![("pk_a".into(), 0), ("fk_b".into(), 3)],
        };
        let b = Group {
            binding: Binding::parse("8:sync:public.tv_b").unwrap(),
            columns: vec![(String::new(), 1)],
        };
        let packed = Group::encode_all(&[a.clone(), b.clone()]);
        assert_eq!(
            packed,
            "7:async:public.tv_a 2 pk_a 0 fk_b 3 8:sync:public.tv_b 1 \"\" 1"
        );
        assert_eq!(
            Group::parse_all(&[&packed]),
            Some(vec![a.clone(), b.clone()])
        );
        assert!(b.full_only() && !a.full_only());
        // Truncated, trailing, empty or split argument lists are refused.
        assert_eq!(Group::parse_all(&[&packed[..packed.len() - 2]]), None);
        assert_eq!(Group::parse_all(&["7:async:public.tv_a 1"]), None);
        assert_eq!(Group::parse_all(&["7:async:public.tv_a  1 pk_a 0"]), None);
        assert_eq!(
            Group::parse_all(&["7:async:public.tv_a", "1", "pk_a", "0"]),
            None
        );
        assert_eq!(Group::parse_all(&[""]), None);
        assert_eq!(Group::parse_all::<&str>(&[]), None);
        assert_eq!(
            Group::parse_one(&["7", "pk_a"]).map(|g| g.columns),
            Some(vec![("pk_a".to_string(), crate::queue::kind::ROW)])
        );
        assert_eq!(Group::parse_one(&["7", "pk_a", "0", "x"]), None);
    }

    #[test]
    fn columns_and_tables_with_spaces_quotes_and_dots_round_trip() {
        let group = Group {
            binding: Binding::parse(&Binding::encode(9, false, "My App", "tv \"x\" y")).unwrap(),
            columns: vec![
                ("pk a".into(), 0),
                ("Fk\"B\"".into(), 3),
                ("a.b 1".into(), 2),
                ("ü".into(), 4),
                (String::new(), 1),
            ],
        };
        let packed = Group::encode_all(std::slice::from_ref(&group));
        assert_eq!(Group::parse_all(&[packed]), Some(vec![group]));
        assert_eq!(unquote("\"a\"b\""), None);
        assert_eq!(unquote("a\"b"), None);
        assert_eq!(unquote("\"a\"\"b\""), Some("a\"b".to_string()));
    }

    #[test]
    fn names_round_trip_through_quoting() {
        for (schema, table) in [
            ("public", "tv_post"),
            ("My App", "tv_post"),
            ("a.b", "tv_x"),
            ("q\"uote", "tv_y"),
            ("Ünï", "tv_z"),
            ("s:1", "tv_w"),
        ] {
            let arg = Binding::encode(7, true, schema, table);
            let parsed = Binding::parse(&arg).unwrap();
            assert_eq!(parsed.oid, 7);
            assert!(parsed.sync);
            assert_eq!(parsed.name, Some((schema.to_string(), table.to_string())));
        }
    }
}

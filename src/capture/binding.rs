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

use pgrx::prelude::*;

/// A parsed first trigger argument.
#[derive(Debug, PartialEq, Eq)]
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

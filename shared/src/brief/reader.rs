//! Reading one section of a brief: typed fields out of a TOML table, each bad one
//! recorded as a [`Problem`] naming the field and the fix, and every field nobody
//! asked for reported as unknown.

use super::lint::{Problem, SECTIONS};
use toml::{Table, Value};

/// The reader of one section; a missing, blank or mistyped section is reported
/// here, once, and its fields are then not reported again.
pub(super) fn open_section<'a>(
    doc: &'a Table,
    empty: &'a Table,
    name: &'static str,
    problems: &mut Vec<Problem>,
) -> Reader<'a> {
    let hint = SECTIONS
        .iter()
        .find(|(s, _)| *s == name)
        .map_or("", |(_, h)| h);
    let table = match doc.get(name) {
        None => {
            problems.push(Problem {
                field: format!("[{name}]"),
                message: format!("the section is missing; add it with {hint}"),
            });
            None
        }
        Some(Value::Table(t)) if t.is_empty() => {
            problems.push(Problem {
                field: format!("[{name}]"),
                message: format!("the section is blank; fill in {hint}"),
            });
            None
        }
        Some(Value::Table(t)) => Some(t),
        Some(_) => {
            problems.push(Problem {
                field: name.into(),
                message: format!("must be a [{name}] table"),
            });
            None
        }
    };
    Reader {
        section: name,
        quiet: table.is_none(),
        table: table.unwrap_or(empty),
        problems: Vec::new(),
        used: Vec::new(),
    }
}

/// Reads typed fields out of one section, recording a problem for each bad one
/// and, at the end, for each field nobody asked for.
pub(super) struct Reader<'a> {
    pub(super) section: &'static str,
    table: &'a Table,
    quiet: bool,
    problems: Vec<Problem>,
    used: Vec<&'static str>,
}

impl<'a> Reader<'a> {
    pub(super) fn problem(&mut self, key: &str, message: impl Into<String>) {
        if !self.quiet {
            self.problems.push(Problem {
                field: format!("{}.{key}", self.section),
                message: message.into(),
            });
        }
    }

    pub(super) fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.used.push(key);
        self.table.get(key)
    }

    pub(super) fn missing(&mut self, key: &str, what: &str) {
        self.problem(key, format!("missing; add {key} = {what}"));
    }

    pub(super) fn text(&mut self, key: &'static str, what: &str) -> Option<String> {
        match self.get(key) {
            None => {
                self.missing(key, what);
                None
            }
            Some(Value::String(s)) if s.trim().is_empty() => {
                self.problem(key, format!("is blank; write {what}"));
                None
            }
            Some(Value::String(s)) => Some(s.trim().to_owned()),
            Some(_) => {
                self.problem(key, format!("must be a string: {what}"));
                None
            }
        }
    }

    pub(super) fn opt_text(&mut self, key: &'static str, what: &str) -> Result<Option<String>, ()> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => {
                self.problem(key, format!("is blank; remove it or write {what}"));
                Err(())
            }
            Some(Value::String(s)) => Ok(Some(s.trim().to_owned())),
            Some(_) => {
                self.problem(key, format!("must be a string: {what}"));
                Err(())
            }
        }
    }

    pub(super) fn integer(
        &mut self,
        key: &'static str,
        min: i64,
        max: i64,
        what: &str,
    ) -> Option<i64> {
        match self.get(key) {
            None => {
                self.missing(key, what);
                None
            }
            Some(v) => self.check_integer(key, v, min, max),
        }
    }

    pub(super) fn check_integer(
        &mut self,
        key: &str,
        v: &Value,
        min: i64,
        max: i64,
    ) -> Option<i64> {
        match v {
            Value::Integer(i) if (min..=max).contains(i) => Some(*i),
            Value::Integer(i) => {
                self.problem(key, format!("{i} is out of range; use {min}..={max}"));
                None
            }
            _ => {
                self.problem(key, format!("must be an integer in {min}..={max}"));
                None
            }
        }
    }

    pub(super) fn boolean(&mut self, key: &'static str, what: &str) -> Option<bool> {
        match self.get(key) {
            None => {
                self.missing(key, what);
                None
            }
            Some(Value::Boolean(b)) => Some(*b),
            Some(_) => {
                self.problem(key, format!("must be true or false: {what}"));
                None
            }
        }
    }

    /// A list of strings; `ident` reads each as a column's name
    /// ([`crate::sql::parse_identifier`]).
    pub(super) fn list(
        &mut self,
        key: &'static str,
        required: bool,
        ident: bool,
    ) -> Option<Vec<String>> {
        let Some(v) = self.get(key) else {
            if required {
                self.missing(key, "[\"...\"]");
                return None;
            }
            return Some(Vec::new());
        };
        let Value::Array(items) = v else {
            self.problem(key, "must be a list of strings, e.g. [\"a\", \"b\"]");
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Value::String(s) if !s.trim().is_empty() => {
                    let s = if ident {
                        let Some(name) = crate::sql::parse_identifier(s) else {
                            self.problem(key, format!("{s:?} is not a column name; {COLUMN_NAME}"));
                            return None;
                        };
                        name
                    } else {
                        s.trim().to_owned()
                    };
                    if out.contains(&s) {
                        self.problem(key, format!("{s:?} is listed twice"));
                        return None;
                    }
                    out.push(s);
                }
                _ => {
                    self.problem(key, "every entry must be a non-blank string");
                    return None;
                }
            }
        }
        Some(out)
    }

    pub(super) fn choice<T>(
        &mut self,
        key: &'static str,
        names: &[&str],
        parse: fn(&str) -> Option<T>,
    ) -> Option<T> {
        let listed = names.join(" | ");
        let name = self.text(key, &format!("one of {listed}"))?;
        let parsed = parse(&name);
        if parsed.is_none() {
            self.problem(key, format!("unknown value {name:?}; use one of {listed}"));
        }
        parsed
    }

    pub(super) fn finish(self) -> Vec<Problem> {
        let Self {
            section,
            table,
            quiet,
            mut problems,
            used,
        } = self;
        if !quiet {
            for key in table.keys() {
                if !used.contains(&key.as_str()) {
                    problems.push(Problem {
                        field: format!("{section}.{key}"),
                        message: format!(
                            "unknown field; the fields of [{section}] are {}",
                            used.join(", ")
                        ),
                    });
                }
            }
        }
        problems
    }
}

/// How a brief writes a column's name, for the lint's refusals.
pub(super) const COLUMN_NAME: &str = "write it as it is named (net_revenue), or in double quotes if it holds a dot, a quote, a space or a ; (in TOML, '\"Net Revenue\"'), at most 63 bytes";

/// An optional array of tables (`[[validation.metrics]]`), each read by `item`.
pub(super) fn read_tables<T>(
    r: &mut Reader<'_>,
    key: &'static str,
    item: impl Fn(&mut Reader<'_>, &Table, usize) -> Option<T>,
) -> Option<Vec<T>> {
    let Some(v) = r.get(key) else {
        return Some(Vec::new());
    };
    let Value::Array(items) = v else {
        r.problem(
            key,
            format!("must be an array of tables: [[{}.{key}]]", r.section),
        );
        return None;
    };
    let mut out = Vec::new();
    let mut ok = true;
    for (i, v) in items.iter().enumerate() {
        match v {
            Value::Table(t) => match item(r, t, i) {
                Some(x) => out.push(x),
                None => ok = false,
            },
            _ => {
                r.problem(&format!("{key}[{i}]"), "must be a table");
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

//! A cursor over one spanned TOML file: parsing it, turning byte spans into 1-based
//! `LINE:COL` positions, and typed getters on a table that record a [`Diagnostic`] at the
//! offending key or value and hand back `None`, so the checks in `main_file.rs`, `apps.rs`
//! and `grant.rs` read as "get this key as that type" and the walk goes on after a problem.
//!
//! Positions: a bad value is reported at the value, an unknown key at the key, a missing
//! key at the table that should hold it (its `[name]` header, or line 1, column 1 for a
//! file's top level).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::{DeString, DeTable, DeValue};
use toml::Spanned;

use super::syntax::parse_duration;
use super::Diagnostic;

type Key<'i> = Spanned<DeString<'i>>;
pub(crate) type Value<'i> = Spanned<DeValue<'i>>;

/// Reads a file as UTF-8; an I/O error or invalid UTF-8 becomes a diagnostic.
pub(crate) fn read_text(path: &Path, diags: &mut Vec<Diagnostic>) -> Option<String> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) => {
            diags.push(whole_file(path, format!("cannot read: {err}")));
            return None;
        }
    };
    match String::from_utf8(bytes) {
        Ok(text) => Some(text),
        Err(err) => {
            let valid = err.utf8_error().valid_up_to();
            let bytes = err.into_bytes();
            // The prefix up to `valid` is valid UTF-8 by construction.
            let prefix = String::from_utf8_lossy(&bytes[..valid]);
            let (line, col) = LineIndex::new(&prefix).line_col(&prefix, valid);
            diags.push(Diagnostic {
                file: path.to_path_buf(),
                line,
                col,
                message: "invalid UTF-8: the file must be UTF-8 encoded TOML".to_string(),
            });
            None
        }
    }
}

/// A problem with a file as a whole (line 0, shown as `FILE: message`).
pub(crate) fn whole_file(path: &Path, message: String) -> Diagnostic {
    Diagnostic {
        file: path.to_path_buf(),
        line: 0,
        col: 0,
        message,
    }
}

/// Byte offset -> 1-based line and column (in characters).
pub(crate) struct LineIndex {
    /// Byte offset where each line starts; `line_starts[0] == 0`.
    line_starts: Vec<usize>,
}

impl LineIndex {
    pub(crate) fn new(text: &str) -> LineIndex {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { line_starts }
    }

    /// 1-based (line, column) of `offset` in `text` (the text this index was built from).
    /// Offsets past the end clamp to the end; an offset inside a character counts as
    /// that character.
    pub(crate) fn line_col(&self, text: &str, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self.line_starts[line - 1];
        let col = text[start..offset].chars().count() + 1;
        (line, col)
    }
}

/// One file being checked: where its diagnostics go and how spans become positions.
pub(crate) struct FileCx<'a> {
    file: PathBuf,
    text: &'a str,
    index: LineIndex,
    diags: &'a mut Vec<Diagnostic>,
}

impl<'a> FileCx<'a> {
    pub(crate) fn new(file: &Path, text: &'a str, diags: &'a mut Vec<Diagnostic>) -> FileCx<'a> {
        FileCx {
            file: file.to_path_buf(),
            text,
            index: LineIndex::new(text),
            diags,
        }
    }

    pub(crate) fn pos(&self, span: &Range<usize>) -> (usize, usize) {
        self.index.line_col(self.text, span.start)
    }

    /// A problem at `span` (its start).
    pub(crate) fn at(&mut self, span: &Range<usize>, message: impl Into<String>) {
        let (line, col) = self.pos(span);
        self.diags.push(Diagnostic {
            file: self.file.clone(),
            line,
            col,
            message: message.into(),
        });
    }

    /// A problem with the file as a whole (line 0).
    pub(crate) fn whole(&mut self, message: impl Into<String>) {
        self.diags.push(whole_file(&self.file, message.into()));
    }
}

/// Parses a document; a syntax error becomes one diagnostic at its span.
pub(crate) fn parse_toml<'i>(cx: &mut FileCx<'_>, text: &'i str) -> Option<Spanned<DeTable<'i>>> {
    match DeTable::parse(text) {
        Ok(root) => Some(root),
        Err(err) => {
            let span = err.span().unwrap_or(0..0);
            let message = err.message().replace('\n', " ");
            cx.at(&span, format!("TOML syntax error: {message}"));
            None
        }
    }
}

// ---------------------------------------------------------------------------------------
// Tables and typed getters

/// A table being checked, with what messages call it.
pub(crate) struct Section<'t, 'i> {
    table: &'t DeTable<'i>,
    /// Where a missing key is reported: the `[name]` header, or 0..0 (line 1, col 1)
    /// for a file's top level.
    span: Range<usize>,
    /// `None` for the top level, else the table name, e.g. `refresh`.
    name: Option<&'static str>,
}

impl<'t, 'i> Section<'t, 'i> {
    /// A file's top level.
    pub(crate) fn root(table: &'t DeTable<'i>) -> Section<'t, 'i> {
        Section {
            table,
            span: 0..0,
            name: None,
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<(&'t Key<'i>, &'t Value<'i>)> {
        self.table.get_key_value(key)
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    /// `" in [name]"` for messages, or "" at the top level.
    fn where_(&self) -> String {
        match self.name {
            Some(name) => format!(" in [{name}]"),
            None => String::new(),
        }
    }

    /// Reports every key not in `allowed`, at the key.
    pub(crate) fn unknown_keys(&self, cx: &mut FileCx<'_>, allowed: &[&str]) {
        for (key, _) in self.table.iter() {
            if !allowed.contains(&key.get_ref().as_ref()) {
                let message = format!(
                    "unknown key `{}`{}",
                    key.get_ref().escape_debug(),
                    self.where_()
                );
                cx.at(&key.span(), message);
            }
        }
    }

    pub(crate) fn missing(&self, cx: &mut FileCx<'_>, key: &str) {
        let message = format!("missing required key `{key}`{}", self.where_());
        cx.at(&self.span, message);
    }

    /// A sub-table, or `None` when absent or (reported) not a table.
    pub(crate) fn table(&self, cx: &mut FileCx<'_>, key: &'static str) -> Option<Section<'t, 'i>> {
        let (_, value) = self.get(key)?;
        match value.get_ref() {
            DeValue::Table(table) => Some(Section {
                table,
                span: value.span(),
                name: Some(key),
            }),
            _ => {
                cx.at(&value.span(), format!("`{key}` must be a table"));
                None
            }
        }
    }

    /// An array of tables (`[[key]]`): one section per element, each named `key` in
    /// messages; `None` when absent or (reported) not an array of tables.
    pub(crate) fn tables(
        &self,
        cx: &mut FileCx<'_>,
        key: &'static str,
    ) -> Option<Vec<Section<'t, 'i>>> {
        let (_, value) = self.get(key)?;
        let DeValue::Array(array) = value.get_ref() else {
            cx.at(
                &value.span(),
                format!("`{key}` must be an array of tables ([[{key}]])"),
            );
            return None;
        };
        let mut out = Vec::new();
        for item in array.iter() {
            match item.get_ref() {
                DeValue::Table(table) => out.push(Section {
                    table,
                    span: item.span(),
                    name: Some(key),
                }),
                _ => cx.at(
                    &item.span(),
                    format!("`{key}` must be an array of tables ([[{key}]])"),
                ),
            }
        }
        Some(out)
    }

    /// A string value and its span.
    pub(crate) fn string(&self, cx: &mut FileCx<'_>, key: &str) -> Option<(&'t str, Range<usize>)> {
        let (_, value) = self.get(key)?;
        match value.get_ref() {
            DeValue::String(s) => Some((s.as_ref(), value.span())),
            _ => {
                cx.at(&value.span(), format!("`{key}` must be a string"));
                None
            }
        }
    }

    pub(crate) fn non_empty(
        &self,
        cx: &mut FileCx<'_>,
        key: &str,
    ) -> Option<(&'t str, Range<usize>)> {
        let (s, span) = self.string(cx, key)?;
        if s.is_empty() {
            cx.at(&span, format!("`{key}` must not be empty"));
            return None;
        }
        Some((s, span))
    }

    /// A non-empty path string, resolved against `base` when relative.
    pub(crate) fn path(
        &self,
        cx: &mut FileCx<'_>,
        key: &str,
        base: &Path,
    ) -> Option<(PathBuf, Range<usize>)> {
        let (s, span) = self.non_empty(cx, key)?;
        Some((base.join(s), span))
    }

    /// An integer or a float, as f64.
    pub(crate) fn number(&self, cx: &mut FileCx<'_>, key: &str) -> Option<(f64, Range<usize>)> {
        let (_, value) = self.get(key)?;
        let number = match value.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(|i| i as f64),
            DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
            _ => None,
        };
        if number.is_none() {
            cx.at(&value.span(), format!("`{key}` must be a number"));
        }
        number.map(|n| (n, value.span()))
    }

    pub(crate) fn integer(&self, cx: &mut FileCx<'_>, key: &str) -> Option<(i64, Range<usize>)> {
        let (_, value) = self.get(key)?;
        match integer_value(value.get_ref()) {
            Ok(i) => Some((i, value.span())),
            Err(what) => {
                cx.at(&value.span(), format!("`{key}` {what}"));
                None
            }
        }
    }

    /// A duration string (see [`parse_duration`]).
    pub(crate) fn duration(
        &self,
        cx: &mut FileCx<'_>,
        key: &str,
    ) -> Option<(Duration, Range<usize>)> {
        let (_, value) = self.get(key)?;
        let DeValue::String(s) = value.get_ref() else {
            cx.at(
                &value.span(),
                format!("`{key}` must be a duration string like \"5m\""),
            );
            return None;
        };
        match parse_duration(s) {
            Ok(d) => Some((d, value.span())),
            Err(err) => {
                cx.at(&value.span(), format!("`{key}`: {err}"));
                None
            }
        }
    }

    /// A required string key; missing is reported at the table.
    pub(crate) fn required(
        &self,
        cx: &mut FileCx<'_>,
        key: &str,
    ) -> Option<(&'t str, Range<usize>)> {
        if !self.has(key) {
            self.missing(cx, key);
            return None;
        }
        self.string(cx, key)
    }

    /// A command: a non-empty array of strings whose first element (the program) is non-empty.
    pub(crate) fn command(&self, cx: &mut FileCx<'_>, key: &str) -> Option<Vec<String>> {
        let (_, value) = self.get(key)?;
        let argv: Option<Vec<String>> = value.get_ref().as_array().and_then(|array| {
            array
                .iter()
                .map(|item| item.get_ref().as_str().map(str::to_string))
                .collect()
        });
        match argv {
            Some(argv) if argv.first().is_some_and(|program| !program.is_empty()) => Some(argv),
            _ => {
                cx.at(
                    &value.span(),
                    format!(
                        "`{key}` must be a non-empty array of strings (program first, then its arguments)"
                    ),
                );
                None
            }
        }
    }

    /// An array; `None` when absent or (reported) not an array.
    pub(crate) fn array(
        &self,
        cx: &mut FileCx<'_>,
        key: &str,
        what: &str,
    ) -> Option<&'t [Value<'i>]> {
        let (_, value) = self.get(key)?;
        match value.get_ref() {
            DeValue::Array(array) => Some(array.as_ref()),
            _ => {
                cx.at(&value.span(), format!("`{key}` must be an array of {what}"));
                None
            }
        }
    }

    /// An array of non-empty strings; each bad element is reported at the element.
    pub(crate) fn strings(&self, cx: &mut FileCx<'_>, key: &str) -> Option<Vec<String>> {
        let array = self.array(cx, key, "strings")?;
        let mut out = Vec::new();
        let mut ok = true;
        for item in array {
            match item.get_ref() {
                DeValue::String(s) if !s.is_empty() => out.push(s.to_string()),
                _ => {
                    cx.at(
                        &item.span(),
                        format!("`{key}` must contain only non-empty strings"),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }
}

/// An integer's value; `Err` says what is wrong ("must be an integer", "is out of range").
pub(crate) fn integer_value(value: &DeValue<'_>) -> Result<i64, &'static str> {
    match value {
        DeValue::Integer(i) => {
            i64::from_str_radix(i.as_str(), i.radix()).map_err(|_| "is out of range")
        }
        _ => Err("must be an integer"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_mapping() {
        let text = "ab\nçd€f\n\nx";
        let index = LineIndex::new(text);
        let at = |offset| index.line_col(text, offset);
        assert_eq!(at(0), (1, 1));
        assert_eq!(at(1), (1, 2));
        assert_eq!(at(2), (1, 3)); // the newline itself
        assert_eq!(at(3), (2, 1)); // ç
        assert_eq!(at(5), (2, 2)); // d: ç is two bytes, one column
        assert_eq!(at(6), (2, 3)); // €
        assert_eq!(at(7), (2, 3)); // inside €: counts as €
        assert_eq!(at(9), (2, 4)); // f: € is three bytes
        assert_eq!(at(11), (3, 1)); // the empty line
        assert_eq!(at(12), (4, 1)); // x
        assert_eq!(at(13), (4, 2)); // end of text
        assert_eq!(at(1000), (4, 2)); // clamped
        let empty = LineIndex::new("");
        assert_eq!(empty.line_col("", 5), (1, 1));
    }
}

//! Plain-text tables for a terminal: a header row, columns padded to their widest cell.
//! Every cell is passed through [`escape`]: most of what the tables show (task and
//! container names, reasons, events) comes from devices, and a device must not be able to
//! drive the operator's terminal or forge rows.

use std::borrow::Cow;
use std::fmt::Write;

/// `text` safe to print on a terminal: control characters (C0, DEL, C1: escape sequences,
/// newlines, carriage returns) and the bidirectional overrides that reorder what is shown
/// are written as Rust-style escapes (`\n`, `\u{1b}`); everything else is kept.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&'static str]) -> Self {
        Self {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len());
        self.rows.push(
            cells
                .into_iter()
                .map(|c| match escape(&c) {
                    Cow::Borrowed(_) => c,
                    Cow::Owned(escaped) => escaped,
                })
                .collect(),
        );
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.header.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let last = row.len().saturating_sub(1);
            for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
                if i == last {
                    out.push_str(cell);
                } else {
                    out.push_str(&format!("{cell:<w$}  "));
                }
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_to_the_widest_cell() {
        let mut t = Table::new(&["ID", "STATUS"]);
        t.row(vec!["mi-1".into(), "ACTIVE".into()]);
        t.row(vec!["mi-0123".into(), "-".into()]);
        assert_eq!(t.render(), "ID       STATUS\nmi-1     ACTIVE\nmi-0123  -\n");
    }

    #[test]
    fn device_strings_cannot_drive_the_terminal_or_forge_rows() {
        let hostile = "web\u{1b}]0;owned\u{7}\u{1b}[2J\nmi-9  RUNNING\r\u{9b}31m\u{202e}gpj.exe\tz";
        let mut t = Table::new(&["NAME", "STATUS"]);
        t.row(vec![hostile.into(), "ok".into()]);
        let out = t.render();
        assert_eq!(out.lines().count(), 2, "one header, one row: {out:?}");
        assert!(
            !out.chars().any(|c| c != '\n' && needs_escape(c)),
            "{out:?}"
        );
        assert!(out.contains(
            "web\\u{1b}]0;owned\\u{7}\\u{1b}[2J\\nmi-9  RUNNING\\r\\u{9b}31m\\u{202e}gpj.exe\\tz"
        ), "{out:?}");
        assert_eq!(escape("plain ÅSCII-ish text"), "plain ÅSCII-ish text");
        assert!(matches!(escape("plain"), Cow::Borrowed(_)));
    }
}

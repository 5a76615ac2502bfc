//! Output for a person at a terminal: tables with aligned columns (for
//! `peers` and `status`), peer ids shortened for them, and progress bars
//! (for `stream` and `deploy`, drawn on stderr only when it is a
//! terminal).

use std::borrow::Cow;

use indicatif::{ProgressBar, ProgressStyle};

use crate::text::{SHORT_ID_CHARS, printable, short_id};

/// Rows as aligned columns, each line starting with `indent`. Cells are
/// made [`printable`] here, before their widths are measured: tables show
/// what other peers announced (addresses, app names, versions, errors).
pub(super) fn table(rows: &[Vec<String>], indent: &str) -> String {
    let rows: Vec<Vec<Cow<str>>> = rows
        .iter()
        .map(|r| r.iter().map(|c| printable(c)).collect())
        .collect();
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(indent);
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// A peer id where a table has no room for all of it: its last
/// [`SHORT_ID_CHARS`] characters.
pub(super) fn short(id: &str) -> String {
    short_id(id, SHORT_ID_CHARS)
}

/// A header row: the column names.
pub(super) fn header(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// A progress bar (on stderr) of `len` steps, or a spinner when the total
/// is not known, drawn with indicatif's `template`.
pub(super) fn progress_bar(len: Option<u64>, template: &str) -> ProgressBar {
    let pb = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        pb.set_style(style);
    }
    pb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_by_characters() {
        let rows = vec![header(&["A", "B"]), vec!["é🦀".into(), "x".into()]];
        assert_eq!(table(&rows, "  "), "  A   B\n  é🦀  x\n");
    }
}

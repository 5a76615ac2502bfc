//! Small string helpers for text this peer did not write itself: versions,
//! addresses and error messages announced by other peers, app output.
//!
//! Two rules, each in one place:
//! - **Shorten by characters, never by bytes.** A string from another peer
//!   may hold multi-byte characters, and `&s[..12]` panics when byte 12
//!   falls inside one. [`head`], [`tail`], [`truncate`] and [`short_id`]
//!   cut on character boundaries.
//! - **Strip control characters before a terminal sees them.** A peer
//!   that announces `"\x1b]0;pwned\x07"` as its HTTP address must not
//!   retitle the operator's terminal, hide text, or fake output lines.
//!   [`printable`] removes escape sequences and control characters.

use std::borrow::Cow;

/// The first `n` characters of `s` (all of `s` if it is shorter).
pub fn head(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((cut, _)) => &s[..cut],
        None => s,
    }
}

/// The last `n` characters of `s` (all of `s` if it is shorter).
pub fn tail(s: &str, n: usize) -> &str {
    if n == 0 {
        return "";
    }
    match s.char_indices().rev().nth(n - 1) {
        Some((cut, _)) => &s[cut..],
        None => s,
    }
}

/// Cuts `s` to its first `max` characters and marks the cut with `…`;
/// leaves it alone when it is short enough.
pub fn truncate(s: &mut String, max: usize) {
    if let Some((cut, _)) = s.char_indices().nth(max) {
        s.truncate(cut);
        s.push('…');
    }
}

/// [`truncate`] for a borrowed string.
pub fn truncated(s: &str, max: usize) -> Cow<'_, str> {
    match s.char_indices().nth(max) {
        Some((cut, _)) => Cow::Owned(format!("{}…", &s[..cut])),
        None => Cow::Borrowed(s),
    }
}

/// How many characters of a peer id [`short_id`] keeps for display: one
/// length everywhere, so the same peer looks the same in every table.
pub const SHORT_ID_CHARS: usize = 10;

/// A peer id as tables show it: `…` and its last `n` characters
/// ([`SHORT_ID_CHARS`] for display). Peer ids end in their most random
/// characters, so the tail tells peers apart.
pub fn short_id(id: &str, n: usize) -> String {
    format!("…{}", tail(id, n))
}

/// `s` with nothing a terminal would act on.
///
/// - Tab, newline and carriage return become one space each: the text
///   stays on one line (a table cell, a log line) and words do not merge.
/// - Escape sequences are removed whole, not just their ESC: CSI
///   (`ESC [ … final`, e.g. colours `ESC[31m`, cursor moves, clears),
///   string commands (OSC `ESC ] … BEL|ST` such as window titles and
///   hyperlinks, DCS, SOS, PM, APC) and two-character escapes, along with
///   their 8-bit C1 forms (`U+009B` CSI, `U+009D` OSC, ...).
/// - Every other control character goes: C0 (`U+0000`–`U+001F`), DEL,
///   C1 (`U+0080`–`U+009F`), and the bidirectional overrides and isolates
///   (`U+202A`–`U+202E`, `U+2066`–`U+2069`, `U+200E`, `U+200F`, `U+061C`)
///   that make text display in another order than it reads.
///
/// Borrows when there is nothing to remove (the common case).
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unprintable) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\t' | '\n' | '\r' => out.push(' '),
            '\u{1b}' => skip_escape(&mut chars),
            '\u{9b}' => skip_csi(&mut chars),
            '\u{90}' | '\u{98}' | '\u{9d}' | '\u{9e}' | '\u{9f}' => skip_string(&mut chars),
            c if is_unprintable(c) => {}
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn is_unprintable(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

type Chars<'a> = std::iter::Peekable<std::str::Chars<'a>>;

/// After an ESC: the rest of the sequence it starts.
fn skip_escape(chars: &mut Chars) {
    match chars.peek() {
        Some('[') => {
            chars.next();
            skip_csi(chars);
        }
        Some(']' | 'P' | 'X' | '^' | '_') => {
            chars.next();
            skip_string(chars);
        }
        // ESC, intermediates (0x20-0x2F), one final (0x30-0x7E): e.g.
        // `ESC ( B` (character set) or `ESC c` (reset).
        Some(_) => {
            while chars
                .next_if(|c| ('\u{20}'..='\u{2f}').contains(c))
                .is_some()
            {}
            chars.next_if(|c| ('\u{30}'..='\u{7e}').contains(c));
        }
        None => {}
    }
}

/// A control sequence after its introducer: parameters and intermediates
/// (0x20-0x3F), then one final character (0x40-0x7E). A character outside
/// those ends it early and is kept (it is judged on its own).
fn skip_csi(chars: &mut Chars) {
    while chars
        .next_if(|c| ('\u{20}'..='\u{3f}').contains(c))
        .is_some()
    {}
    chars.next_if(|c| ('\u{40}'..='\u{7e}').contains(c));
}

/// A string command (OSC, DCS, ...) after its introducer: everything up to
/// and including its terminator, BEL, ST (`ESC \`) or C1 ST. A terminal
/// swallows an unterminated one to the end, and so do we.
fn skip_string(chars: &mut Chars) {
    while let Some(c) = chars.next() {
        match c {
            '\u{07}' | '\u{9c}' => return,
            '\u{1b}' if chars.peek() == Some(&'\\') => {
                chars.next();
                return;
            }
            _ => {}
        }
    }
}

/// "3m 12s" style age of a unix-ms timestamp.
pub fn ago(now_ms: u64, then_ms: u64) -> String {
    let secs = now_ms.saturating_sub(then_ms) / 1000;
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m {}s", secs / 60, secs % 60),
        3600..=86399 => format!("{}h {}m", secs / 3600, (secs % 3600) / 60),
        _ => format!("{}d {}h", secs / 86400, (secs % 86400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortening_never_splits_a_character() {
        // 2 bytes each: `&v[..7]` would panic, byte 7 being inside one.
        let v = "é".repeat(20);
        assert_eq!(head(&v, 7), "é".repeat(7));
        assert_eq!(head("abc", 12), "abc");
        assert_eq!(tail(&v, 3), "ééé");
        assert_eq!(tail("abc", 10), "abc");
        assert_eq!(tail("abc", 0), "");
        assert_eq!(head("a🦀b", 2), "a🦀");
        assert_eq!(tail("a🦀b", 2), "🦀b");
        assert_eq!(short_id("12D3KooWxyz", 3), "…xyz");
        assert_eq!(short_id("ü", 10), "…ü");
    }

    #[test]
    fn truncation_marks_the_cut() {
        let mut s = "ab🦀cd".to_string();
        truncate(&mut s, 3);
        assert_eq!(s, "ab🦀…");
        let mut s = "short".to_string();
        truncate(&mut s, 5);
        assert_eq!(s, "short");
        assert_eq!(truncated("ab🦀cd", 2), "ab…");
        assert!(matches!(truncated("ab", 2), Cow::Borrowed("ab")));
    }

    #[test]
    fn printable_text_is_borrowed_untouched() {
        let s = "apps/echo failed: worker exited with status 3 (ünïcödé ok, 🦀 too)";
        assert!(matches!(printable(s), Cow::Borrowed(b) if b == s));
    }

    #[test]
    fn ansi_sequences_go_whole() {
        // Colours, a cursor move and a screen clear.
        assert_eq!(printable("\x1b[31mred\x1b[0m"), "red");
        assert_eq!(printable("a\x1b[2;5Hb\x1b[2Jc"), "abc");
        // A private-mode CSI (`?`) and the 8-bit CSI.
        assert_eq!(printable("x\x1b[?25ly"), "xy");
        assert_eq!(printable("x\u{9b}1;31my"), "xy");
        // A window title (OSC, ended by BEL or by ST) and a hyperlink.
        assert_eq!(printable("\x1b]0;pwned\x07peer"), "peer");
        assert_eq!(printable("\x1b]0;pwned\x1b\\peer"), "peer");
        assert_eq!(
            printable("\x1b]8;;http://evil/\x1b\\click\x1b]8;;\x1b\\"),
            "click"
        );
        assert_eq!(printable("\u{9d}0;t\u{9c}ok"), "ok");
        // DCS and two-character escapes (charset, full reset).
        assert_eq!(printable("\x1bPq#0\x1b\\a"), "a");
        assert_eq!(printable("\x1b(Bx\x1bcy"), "xy");
        // A lone ESC at the end, an unterminated title.
        assert_eq!(printable("end\x1b"), "end");
        assert_eq!(printable("ok\x1b]0;never ends"), "ok");
    }

    #[test]
    fn other_controls_go_and_whitespace_becomes_spaces() {
        assert_eq!(printable("a\tb\nc\r\nd"), "a b c  d");
        assert_eq!(
            printable("bell\x07 nul\0 bs\x08 del\x7f"),
            "bell nul bs del"
        );
        assert_eq!(printable("c1\u{85}\u{8d}x"), "c1x");
        // Bidi overrides that would show "txt.exe" as "exe.txt".
        assert_eq!(printable("a\u{202e}b\u{2066}c\u{2069}"), "abc");
    }

    #[test]
    fn nothing_unprintable_survives() {
        let nasty: String = (0u32..0x300)
            .chain(0x2000..0x2070)
            .filter_map(char::from_u32)
            .collect();
        let out = printable(&nasty);
        assert!(!out.chars().any(is_unprintable), "{out:?}");
    }
}

//! JSON as it travels to workers: one value per line.

/// Checks that `text` is one JSON value and returns it as one line: as it
/// is when it has no newline, re-encoded compactly otherwise (JSON strings
/// cannot contain a raw newline, so only whitespace between tokens can).
pub fn one_line(text: &str) -> Result<String, serde_json::Error> {
    let raw: &serde_json::value::RawValue = serde_json::from_str(text)?;
    let json = raw.get().trim();
    // Workers read one job per line, and some (Python's text mode among
    // them) also break lines at a carriage return. In valid JSON both can
    // only be whitespace between tokens (inside strings they must be
    // escaped), so dropping them changes nothing else: numbers and strings
    // stay exactly as sent (no round trip through f64).
    if json.contains(['\n', '\r']) {
        Ok(json.chars().filter(|c| !matches!(c, '\n' | '\r')).collect())
    } else {
        Ok(json.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_validates_and_compacts() {
        assert_eq!(one_line(r#"{"a": 1}"#).unwrap(), r#"{"a": 1}"#);
        assert_eq!(
            one_line("{\n \"a\": [1,\n 2]\n}\n").unwrap(),
            r#"{ "a": [1, 2]}"#
        );
        // Big numbers survive a multi-line body untouched.
        assert_eq!(
            one_line("[\r\n123456789012345678901234567890\n]").unwrap(),
            "[123456789012345678901234567890]"
        );
        assert_eq!(one_line(" \"x\" ").unwrap(), r#""x""#);
        assert!(one_line("{").is_err());
        assert!(one_line("1 2").is_err());
        assert!(one_line("").is_err());
    }
}

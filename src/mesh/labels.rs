//! Labels of peers (`disruptor peer --label gpu --label zone=eu`) and the
//! selectors of placement (`disruptor start APP --on gpu`).
//!
//! A label is `NAME` or `NAME=VALUE`. A selector has the same syntax:
//! `NAME` matches a peer with a label of that name, whatever its value;
//! `NAME=VALUE` only that value. Names and values are short, of letters,
//! digits and `.`, `_`, `-`, `/`, so a label never needs quoting in a
//! shell, a URL or a log line. Peers announce their labels; every peer
//! parses them the same way (invalid ones are dropped, at most
//! [`MAX_LABELS`] kept), so every peer evaluates a selector alike.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Most labels a peer has (and a decision's selectors).
pub const MAX_LABELS: usize = 16;
/// Longest name, and longest value, in bytes.
pub const MAX_PART: usize = 63;

/// One label, or one selector.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label {
    name: String,
    value: Option<String>,
}

impl Label {
    /// Parses `NAME` or `NAME=VALUE`.
    pub fn parse(s: &str) -> Result<Label, String> {
        let (name, value) = match s.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (s, None),
        };
        check_part("name", name, s)?;
        if let Some(v) = value {
            check_part("value", v, s)?;
        }
        Ok(Label {
            name: name.to_string(),
            value: value.map(str::to_string),
        })
    }

    /// Whether this selector matches `label`: the same name, and the same
    /// value unless the selector names none.
    pub fn selects(&self, label: &Label) -> bool {
        self.name == label.name
            && self
                .value
                .as_ref()
                .is_none_or(|v| label.value.as_ref() == Some(v))
    }
}

fn check_part(what: &str, part: &str, whole: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/');
    if part.is_empty() || part.len() > MAX_PART || !part.chars().all(ok_char) {
        return Err(format!(
            "{whole:?} is not a label: NAME or NAME=VALUE, each 1 to {MAX_PART} letters, digits, '.', '_', '-' or '/' (a {what} is wrong)"
        ));
    }
    Ok(())
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}={v}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// A set of labels (or of selectors): sorted, without duplicates, at most
/// [`MAX_LABELS`]. Its JSON is a list of strings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Labels(Vec<Label>);

impl Labels {
    /// Parses every item; the first bad one, or more than [`MAX_LABELS`]
    /// distinct items, is an error (for what a user typed).
    pub fn parse_all<S: AsRef<str>>(items: &[S]) -> Result<Labels, String> {
        let mut all = items
            .iter()
            .map(|s| Label::parse(s.as_ref().trim()))
            .collect::<Result<Vec<_>, _>>()?;
        all.sort();
        all.dedup();
        if all.len() > MAX_LABELS {
            return Err(format!("at most {MAX_LABELS} labels, not {}", all.len()));
        }
        Ok(Labels(all))
    }

    /// What another peer sent: the valid items among the first
    /// [`MAX_LABELS`] (a peer that sends garbage only loses its labels).
    pub fn parse_lenient<S: AsRef<str>>(items: &[S]) -> Labels {
        let mut all: Vec<Label> = items
            .iter()
            .take(MAX_LABELS)
            .filter_map(|s| Label::parse(s.as_ref()).ok())
            .collect();
        all.sort();
        all.dedup();
        Labels(all)
    }

    /// Whether every selector of `selectors` matches one of these labels.
    pub fn satisfy(&self, selectors: &Labels) -> bool {
        selectors
            .0
            .iter()
            .all(|s| self.0.iter().any(|l| s.selects(l)))
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No labels.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The labels as text, in order.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(Label::to_string).collect()
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_strings().join(","))
    }
}

impl Serialize for Labels {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_strings().serialize(s)
    }
}

/// Deserializing is strict: a decision or a request with a bad selector
/// is refused whole. (Announced labels go through
/// [`Labels::parse_lenient`] instead.)
impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let items: Vec<String> = Vec::deserialize(d)?;
        if items.len() > MAX_LABELS {
            return Err(serde::de::Error::custom(format!(
                "at most {MAX_LABELS} labels"
            )));
        }
        Labels::parse_all(&items).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(items: &[&str]) -> Labels {
        Labels::parse_all(items).unwrap()
    }

    #[test]
    fn names_and_values_parse_and_garbage_does_not() {
        assert_eq!(Label::parse("gpu").unwrap().to_string(), "gpu");
        assert_eq!(Label::parse("zone=eu-1").unwrap().to_string(), "zone=eu-1");
        assert_eq!(
            Label::parse("k8s.io/arch=amd64").unwrap().to_string(),
            "k8s.io/arch=amd64"
        );
        for bad in [
            "", "=", "a=", "=b", "a b", "a=b=c", "zone==eu", "é", "a;b", "a\n",
        ] {
            assert!(Label::parse(bad).is_err(), "{bad:?}");
        }
        let long = "x".repeat(MAX_PART);
        assert!(Label::parse(&long).is_ok());
        assert!(Label::parse(&format!("{long}x")).is_err());
        assert!(Label::parse(&format!("a={long}x")).is_err());
    }

    #[test]
    fn a_selector_without_a_value_matches_any_value() {
        let peer = labels(&["gpu", "zone=eu"]);
        assert!(peer.satisfy(&labels(&[])));
        assert!(peer.satisfy(&labels(&["gpu"])));
        assert!(peer.satisfy(&labels(&["zone"])));
        assert!(peer.satisfy(&labels(&["zone=eu", "gpu"])));
        assert!(!peer.satisfy(&labels(&["zone=us"])));
        assert!(!peer.satisfy(&labels(&["gpu", "ssd"])));
        // A selector with a value does not match a label without one.
        assert!(!labels(&["gpu"]).satisfy(&labels(&["gpu=a100"])));
    }

    #[test]
    fn sets_are_sorted_deduplicated_and_bounded() {
        assert_eq!(labels(&["b", "a", "b"]).to_strings(), ["a", "b"]);
        let many: Vec<String> = (0..=MAX_LABELS).map(|i| format!("l{i}")).collect();
        assert!(Labels::parse_all(&many).is_err());
        assert!(Labels::parse_all(&many[..MAX_LABELS]).is_ok());
        // What a peer announces: the valid ones among the first MAX_LABELS.
        let mut sent = vec!["bad label".to_string()];
        sent.extend(many.iter().cloned());
        let kept = Labels::parse_lenient(&sent);
        assert_eq!(kept.0.len(), MAX_LABELS - 1);
        let json: Result<Labels, _> = serde_json::from_value(serde_json::json!(many));
        assert!(json.is_err());
        let json: Labels = serde_json::from_value(serde_json::json!(["zone=eu", "gpu"])).unwrap();
        assert_eq!(
            serde_json::to_value(&json).unwrap(),
            serde_json::json!(["gpu", "zone=eu"])
        );
        assert!(serde_json::from_value::<Labels>(serde_json::json!(["a b"])).is_err());
        // The bound is inclusive, in JSON too.
        let full: Labels = serde_json::from_value(serde_json::json!(many[..MAX_LABELS])).unwrap();
        assert_eq!(full.len(), MAX_LABELS);
        assert!(Labels::default().is_empty() && !full.is_empty());
    }
}

//! The layering of `src/`, checked: every module imports only modules of
//! the layers below its own, so dependencies point one way and no import
//! cycle can form.
//!
//! It reads the sources as text (no build of the crate is needed to judge
//! them), so it can also judge another tree:
//!
//! ```text
//! ARCH_SRC=/path/to/other/src cargo test --test architecture -- --nocapture
//! ```
//!
//! prints that tree's import graph, its cycles, the imports that point up,
//! and its ten longest functions (what the README's architecture figures
//! come from).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first. A module may import modules of lower layers
/// only: never its own layer's others, never one above. `main.rs` (the
/// binary), `lib.rs` (the list of modules) and `fuzz.rs` (property tests
/// across modules, built for tests only) are outside the layering.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "helpers: text, time, JSON lines, rate limits, secret files",
        &["text", "clock", "json", "ratelimit", "secret_file"],
    ),
    (
        "values: apps and their states, job errors",
        &["apps", "error"],
    ),
    ("observability", &["obs"]),
    ("bundles on disk", &["deploy"]),
    ("what the mesh agrees on", &["mesh"]),
    (
        "this peer's workers; the libp2p side",
        &["worker", "network"],
    ),
    ("where a job runs; the JSON shapes", &["dispatch", "api"]),
    ("the HTTP endpoint", &["http"]),
    ("command-line arguments", &["cli"]),
    ("validated settings", &["config"]),
    ("the wiring of a peer; the CLI client", &["peer", "client"]),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, ms)| ms.contains(&module))
}

/// The source files of the tree, with their top-level module.
fn sources(src: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(src).unwrap();
                let first = rel.components().next().unwrap().as_os_str();
                let module = first.to_string_lossy().trim_end_matches(".rs").to_string();
                out.push((path, module));
            }
        }
    }
    out.sort();
    out
}

/// The code of a file without comments and without its unit tests (a
/// `#[cfg(test)] mod tests` at the end, by this crate's convention).
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t == "#[cfg(test)]"
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod tests"))
        {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The top-level modules a piece of code names through `crate::`.
fn imports(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let bytes = code.as_bytes();
    let ident = |from: usize| -> String {
        code[from..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut at = 0;
    while let Some(i) = code[at..].find("crate::") {
        let start = at + i + "crate::".len();
        at = start;
        // `disruptor_crate::` or `$crate::` are not this crate's paths.
        let before = (at - "crate::".len()).checked_sub(1).map(|b| bytes[b]);
        if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$') {
            continue;
        }
        if bytes.get(start) == Some(&b'{') {
            // `crate::{a, b::{c}}`: the names at the first depth.
            let mut depth = 0;
            let mut expect_name = true;
            for (j, c) in code[start..].char_indices() {
                match c {
                    '{' => {
                        depth += 1;
                        expect_name = depth == 1;
                    }
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => expect_name = true,
                    c if expect_name && depth == 1 && (c.is_alphanumeric() || c == '_') => {
                        found.insert(ident(start + j));
                        expect_name = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(start);
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

/// Module → modules it imports (top level, without itself).
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, module) in sources(src) {
        // The binary, the list of modules, and test-only modules.
        if ["main", "lib", "fuzz"].contains(&module.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read source");
        let entry = g.entry(module.clone()).or_default();
        for m in imports(&code(&text)) {
            if m != module && m != "self" && m != "super" {
                entry.insert(m);
            }
        }
    }
    g
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on.insert(v);
        let g = t.g;
        for w in g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !g.contains_key(w) {
                continue;
            }
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                scc.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                t.out.push(scc);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

/// Imports that break the layering: (module, imported, why).
fn violations(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut out = Vec::new();
    for (m, deps) in g {
        let Some(lm) = layer_of(m) else {
            out.push(format!("{m}: in no layer (add it to LAYERS)"));
            continue;
        };
        for d in deps {
            match layer_of(d) {
                Some(ld) if ld < lm => {}
                Some(ld) if ld == lm => {
                    out.push(format!("{m} -> {d}: same layer ({})", LAYERS[lm].0))
                }
                Some(_) => out.push(format!("{m} -> {d}: points up")),
                None => {}
            }
        }
    }
    out
}

/// Every `fn` of the tree with its length in lines (rustfmt's layout:
/// the body ends at the first `}` at the `fn`'s indentation), test code
/// excluded.
fn functions(src: &Path) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (path, _) in sources(src) {
        let text = std::fs::read_to_string(&path).expect("read source");
        let code = code(&text);
        let lines: Vec<&str> = code.lines().collect();
        let rel = path.strip_prefix(src).unwrap().display().to_string();
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim_start();
            let indent = line.len() - t.len();
            let sig = t
                .trim_start_matches("pub(crate) ")
                .trim_start_matches("pub(super) ")
                .trim_start_matches("pub ")
                .trim_start_matches("const ")
                .trim_start_matches("async ")
                .trim_start_matches("unsafe ");
            let Some(rest) = sig.strip_prefix("fn ") else {
                continue;
            };
            // A declaration without a body (in a trait).
            if t.ends_with(';') {
                continue;
            }
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let close = format!("{}}}", " ".repeat(indent));
            let end = lines[i..]
                .iter()
                .position(|l| *l == close || l.starts_with(&format!("{close} ")))
                .map(|n| i + n);
            if let Some(end) = end {
                out.push((end - i + 1, format!("{rel}: {name}")));
            }
        }
    }
    out.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    out
}

fn src_dir() -> PathBuf {
    std::env::var_os("ARCH_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

#[test]
fn dependencies_point_down_the_layers() {
    let src = src_dir();
    let g = graph(&src);
    println!("import graph of {}:", src.display());
    for (m, deps) in &g {
        let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
        println!("  {m} -> {}", deps.join(", "));
    }
    let cycles = cycles(&g);
    for c in &cycles {
        println!("cycle of {} modules: {}", c.len(), c.join(", "));
    }
    let bad = violations(&g);
    for v in &bad {
        println!("layering: {v}");
    }
    println!("longest functions:");
    for (n, f) in functions(&src).iter().take(10) {
        println!("  {n:4} {f}");
    }
    assert!(cycles.is_empty(), "import cycles: {cycles:?}");
    assert!(bad.is_empty(), "imports against the layering: {bad:#?}");
}

#[test]
fn the_checker_sees_what_it_must() {
    let code = code(
        "use crate::a::B;\nuse crate::{b, c::{d, e}, f as g};\n// crate::commented\nfn x() { crate::h::i(); $crate::j; }\n#[cfg(test)]\nmod tests {\n use crate::k;\n}\n",
    );
    let found: Vec<String> = imports(&code).into_iter().collect();
    assert_eq!(found, ["a", "b", "c", "f", "h"]);
    let mut g = BTreeMap::new();
    g.insert("mesh".to_string(), BTreeSet::from(["dispatch".to_string()]));
    g.insert("dispatch".to_string(), BTreeSet::from(["mesh".to_string()]));
    assert_eq!(cycles(&g), vec![vec!["dispatch", "mesh"]]);
    assert_eq!(violations(&g), vec!["mesh -> dispatch: points up"]);
}

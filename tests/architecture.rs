//! The module graph has no cycles: no module of `src/` reaches, through `crate::` paths, a module
//! that reaches it back. Shared types live in small leaf modules instead (README, "Layout").
//!
//! The graph is read from the source itself: every `crate::NAME` path outside comments and
//! string literals, including each name of a `use crate::{a, b::c}` group, is an edge from the
//! file's top-level module (`src/health/probe.rs` belongs to `health`) to `NAME`. Written by hand
//! because the tools that draw Rust module graphs (`cargo modules`) need a nightly toolchain and
//! a network install, and CI must run this on every fresh clone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module -> the top-level modules its code names.
type Graph = BTreeMap<String, BTreeSet<String>>;

#[test]
fn the_module_graph_of_src_has_no_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = graph_of(&src);
    assert!(
        graph.len() >= 15,
        "read only {} modules from {}: {graph:?}",
        graph.len(),
        src.display()
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "import cycle: {}\n(move what both sides need into a leaf module)\nmodule graph:\n{}",
            cycle.join(" -> "),
            render(&graph)
        );
    }
}

#[test]
fn the_checker_finds_a_cycle_through_a_use_group_and_ignores_comments_and_strings() {
    let mut graph = Graph::new();
    let files = [
        (
            "a",
            "use crate::{b::{X, Y}, c};\n// crate::d in a comment\n",
        ),
        ("b", "fn f() { let _ = \"crate::d\"; crate::c::g(); }\n"),
        ("c", "/* crate::a */ pub fn g() {}\n"),
        ("d", "pub use crate::a::Thing;\n"),
    ];
    for (module, text) in files {
        graph
            .entry(module.to_owned())
            .or_default()
            .extend(names_after_crate(&strip_comments_and_strings(text)));
    }
    assert_eq!(graph["a"], BTreeSet::from(["b".into(), "c".into()]));
    assert_eq!(graph["b"], BTreeSet::from(["c".into()]));
    assert!(graph["c"].is_empty());
    assert_eq!(find_cycle(&graph), None);
    graph.get_mut("c").unwrap().insert("d".into());
    assert_eq!(
        find_cycle(&graph),
        Some(vec![
            "a".into(),
            "b".into(),
            "c".into(),
            "d".into(),
            "a".into()
        ])
    );
}

/// The graph of every `.rs` file under `src` (`lib.rs` and `main.rs` only declare and start
/// the modules, so they are not nodes; a name `lib.rs` re-exports, `crate::Server`, stands for
/// the module it comes from).
fn graph_of(src: &Path) -> Graph {
    let lib = strip_comments_and_strings(&std::fs::read_to_string(src.join("lib.rs")).unwrap());
    let modules: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';').to_owned())
        .collect();
    let mut aliases = BTreeMap::new();
    for line in lib.lines() {
        let Some(path) = line.trim().strip_prefix("pub use ") else {
            continue;
        };
        let module = ident_at(path).unwrap();
        let names = match path.find('{') {
            Some(at) => group_heads(&path[at + 1..]),
            None => ident_at(path.rsplit("::").next().unwrap())
                .into_iter()
                .collect(),
        };
        for name in names {
            aliases.insert(name, module.clone());
        }
    }
    let mut graph = Graph::new();
    for file in rust_files(src) {
        let relative = file.strip_prefix(src).unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        let module = Path::new(first)
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let names = names_after_crate(&strip_comments_and_strings(&text));
        let edges = graph.entry(module.clone()).or_default();
        for name in names {
            let target = match aliases.get(&name) {
                Some(m) => m.clone(),
                None => name,
            };
            assert!(
                modules.contains(&target),
                "{}: `crate::{target}` names no module of src/lib.rs ({modules:?}) and no \
                 re-export there ({aliases:?})",
                file.display()
            );
            if target != module {
                edges.insert(target);
            }
        }
    }
    graph
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// The code with comments, string literals and char literals replaced by spaces.
fn strip_comments_and_strings(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let rest = &chars[i..];
        if rest.starts_with(&['/', '/']) {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if rest.starts_with(&['/', '*']) {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i..].starts_with(&['/', '*']) {
                    depth += 1;
                    i += 2;
                } else if chars[i..].starts_with(&['*', '/']) {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if let Some(hashes) = raw_string_start(rest) {
            // r"..." or r#"..."#: ends at a quote followed by the same number of hashes.
            i += hashes + 2;
            while i < chars.len()
                && !(chars[i] == '"'
                    && chars[i + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|c| **c == '#')
                        .count()
                        == hashes)
            {
                i += 1;
            }
            i += hashes + 1;
        } else if chars[i] == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if chars[i] == '\'' && rest.get(1) == Some(&'\\') {
            // An escaped char literal: '\n', '\'', '\u{..}'.
            i += 2;
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            i += 1;
        } else if chars[i] == '\'' && rest.get(2) == Some(&'\'') {
            i += 3;
        } else {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        out.push(' ');
    }
    out
}

/// `Some(number of #)` when `rest` starts a raw string literal (`r"`, `r#"`, `br"`...).
fn raw_string_start(rest: &[char]) -> Option<usize> {
    let rest = rest.strip_prefix(&['b']).unwrap_or(rest);
    let rest = rest.strip_prefix(&['r'])?;
    let hashes = rest.iter().take_while(|c| **c == '#').count();
    (rest.get(hashes) == Some(&'"')).then_some(hashes)
}

/// The module names right after each `crate::` (for a group, the first name of each item).
fn names_after_crate(code: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut from = 0;
    while let Some(at) = code[from..].find("crate::") {
        let start = from + at;
        from = start + "crate::".len();
        let preceded_by_ident = code[..start]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$');
        if preceded_by_ident {
            continue;
        }
        let rest = code[from..].trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            names.extend(group_heads(group));
        } else {
            names.extend(ident_at(rest));
        }
    }
    names.remove("self");
    names
}

/// The first identifier of each comma-separated item of a `{...}` group (its opening brace
/// already consumed).
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut item_start = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => item_start = true,
            c if item_start && depth == 0 && (c.is_alphabetic() || c == '_') => {
                heads.extend(ident_at(&group[i..]));
                item_start = false;
            }
            _ => {}
        }
    }
    heads
}

fn ident_at(text: &str) -> Option<String> {
    let ident: String = text
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!ident.is_empty()).then_some(ident)
}

/// A cycle as a path that ends where it began, or `None`.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    // Depth-first search with the current path on a stack: an edge back into the path closes a
    // cycle.
    fn visit(
        node: &str,
        graph: &Graph,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

fn render(graph: &Graph) -> String {
    graph
        .iter()
        .map(|(module, edges)| {
            let edges: Vec<&str> = edges.iter().map(String::as_str).collect();
            format!("  {module} -> {}", edges.join(", "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

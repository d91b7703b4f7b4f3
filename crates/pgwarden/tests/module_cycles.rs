//! No two modules of the binary import each other, directly or through
//! others: each role (keeper, sentinel, proxy, ctl) and each shared piece
//! (the HTTP server, the read model, the clock, the store arguments) can then
//! be read, changed and tested on its own.
//!
//! The graph is read from the source: every `crate::a` and `super::a` path
//! outside comments and test code is an edge from the module that names it.
//! Top-level modules are checked against each other, and the submodules of
//! each top-level module among themselves.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read the source directory") {
        let path = entry.expect("read a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a source file: `keeper/node/observe.rs` is
/// `["keeper", "node", "observe"]`, `api/mod.rs` is `["api"]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("a file under src");
    let mut parts: Vec<String> = rel
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The code of a file without its test module and comments.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The identifiers that follow each occurrence of `prefix`.
fn names_after<'a>(code: &'a str, prefix: &str) -> Vec<&'a str> {
    code.match_indices(prefix)
        .map(|(i, _)| {
            let rest = &code[i + prefix.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|name| !name.is_empty())
        .collect()
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph = Graph::new();
    for file in files {
        let module = module_of(&src, &file);
        if module.is_empty() || module.last().is_some_and(|m| m == "tests") {
            continue;
        }
        let code = code(&std::fs::read_to_string(&file).expect("read a source file"));
        let top = module[0].clone();
        for name in names_after(&code, "crate::") {
            if name != top && name != "main" {
                graph
                    .entry(top.clone())
                    .or_default()
                    .insert(name.to_string());
            }
        }
        // Within one top-level module: `super::x` from a submodule, and
        // `crate::top::x`, are edges between its submodules.
        if module.len() >= 2 {
            let from = format!("{top}/{}", module[1]);
            let mut siblings: Vec<&str> = names_after(&code, &format!("crate::{top}::"));
            if module.len() == 2 {
                siblings.extend(names_after(&code, "super::"));
            }
            for name in siblings {
                if name != module[1] && name.chars().next().is_some_and(|c| c.is_lowercase()) {
                    graph
                        .entry(from.clone())
                        .or_default()
                        .insert(format!("{top}/{name}"));
                }
            }
        }
    }
    graph
}

/// Some cycle through `start`, if there is one.
fn cycle_through(graph: &Graph, start: &str) -> Option<Vec<String>> {
    let mut stack = vec![(start.to_string(), vec![start.to_string()])];
    let mut seen = BTreeSet::new();
    while let Some((node, path)) = stack.pop() {
        for next in graph.get(&node).into_iter().flatten() {
            if next == start {
                let mut cycle = path.clone();
                cycle.push(start.to_string());
                return Some(cycle);
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push((next.clone(), longer));
            }
        }
    }
    None
}

#[test]
fn no_two_modules_import_each_other() {
    let graph = graph();
    assert!(
        graph.contains_key("keeper") && graph.contains_key("proxy/accept"),
        "the import graph was not read: {graph:?}"
    );
    let cycles: Vec<String> = graph
        .keys()
        .filter_map(|m| cycle_through(&graph, m))
        .map(|c| c.join(" -> "))
        .collect();
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_checker_sees_a_cycle() {
    let graph: Graph = [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")]
        .into_iter()
        .fold(Graph::new(), |mut g, (from, to)| {
            g.entry(from.into()).or_default().insert(to.into());
            g
        });
    assert_eq!(
        cycle_through(&graph, "a").map(|c| c.join(" -> ")),
        Some("a -> b -> c -> a".to_string())
    );
    assert_eq!(cycle_through(&graph, "d"), None);
    let code = code("use crate::x::y; // crate::commented\nfn f() { super::z(); }");
    assert_eq!(names_after(&code, "crate::"), vec!["x"]);
    assert_eq!(names_after(&code, "super::"), vec!["z"]);
}

//! The workspace's module graph has no import circles: no module uses one that uses it
//! back. The graph is read from the sources: every `crate::`, `super::` and `self::` path
//! (in `use` trees and in code) is an edge from the module it is written in to the deepest
//! module the path names. A module using its own ancestor or descendant is how Rust nests
//! code (`super::Shared`, a `mod.rs` calling its children) and is not an edge; every other
//! reference is an edge between the two sibling modules, under their nearest common
//! parent, that contain the two ends. Those sibling graphs must have no cycle.
//!
//! Needs nothing but the sources.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The crates whose `src/` trees are checked, relative to the workspace root.
const CRATES: &[&str] = &[
    "proto",
    "agent",
    "hub",
    "aws-json",
    "cli",
    "image",
    "tests",
    "bench/loadgen",
];

type Module = Vec<String>;

/// Where a reference was written, for the failure message.
#[derive(Clone, Debug)]
struct Site {
    file: PathBuf,
    line: usize,
    path: String,
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut report = String::new();
    for krate in CRATES {
        let src = root.join(krate).join("src");
        assert!(src.is_dir(), "{}: no src directory", src.display());
        let graph = crate_graph(&src, &root);
        for cycle in cycles(&graph) {
            let _ = writeln!(report, "{krate}: {}", describe(&cycle, &graph));
        }
    }
    assert!(report.is_empty(), "import circles:\n{report}");
}

/// Sibling edges of one crate: (from, to) -> the first reference that made it.
/// Files are named relative to `root` in the sites.
fn crate_graph(src: &Path, root: &Path) -> BTreeMap<(Module, Module), Site> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut modules: BTreeSet<Module> = files.iter().map(|f| file_module(src, f)).collect();
    let mut refs = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read a source file");
        let scan = scan(&strip(&text), &file_module(src, file));
        modules.extend(scan.inline_modules);
        refs.extend(scan.refs.into_iter().map(|(from, target, line, path)| {
            (
                from,
                target,
                Site {
                    file: file.strip_prefix(root).unwrap_or(file).to_path_buf(),
                    line,
                    path,
                },
            )
        }));
    }
    let mut edges = BTreeMap::new();
    for (from, target, site) in refs {
        let to = deepest_module(&modules, &target);
        let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
        // An ancestor or a descendant: nesting, not an import between peers.
        if common == from.len() || common == to.len() {
            continue;
        }
        let a = from[..=common].to_vec();
        let b = to[..=common].to_vec();
        edges.entry((a, b)).or_insert(site);
    }
    edges
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read a source directory")
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// `src/a/b.rs` and `src/a/b/mod.rs` are `a::b`; `lib.rs` and `main.rs` the root.
fn file_module(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).expect("a file under src");
    let mut parts: Module = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

fn deepest_module(modules: &BTreeSet<Module>, target: &[String]) -> Module {
    (0..=target.len())
        .rev()
        .map(|n| target[..n].to_vec())
        .find(|m| modules.contains(m))
        .unwrap_or_default()
}

/// The text with comments, string and char literals blanked out; newlines are kept so
/// line numbers still match.
fn strip(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
        } else if c == 'r'
            && matches!(next, Some('"' | '#'))
            && !ident_char(b.get(i.wrapping_sub(1)))
        {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (0..hashes).all(|h| b.get(j + 1 + h) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.extend(b[i..j.min(b.len())].iter().map(|&c| blank(c)));
            i = j;
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < b.len() {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' && char_literal_len(&b[i..]).is_some() {
            let n = char_literal_len(&b[i..]).unwrap_or(1);
            out.extend(std::iter::repeat_n(' ', n));
            i += n;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_char(c: Option<&char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || *c == '_')
}

/// The length of a char literal starting at `b[0] == '\''`, or None for a lifetime.
fn char_literal_len(b: &[char]) -> Option<usize> {
    match b.get(1)? {
        '\\' => {
            let end = b.iter().skip(2).position(|&c| c == '\'')?;
            Some(end + 3)
        }
        _ if b.get(2) == Some(&'\'') => Some(3),
        _ => None,
    }
}

struct Scan {
    /// (from module, target path, line, the path as written)
    refs: Vec<(Module, Vec<String>, usize, String)>,
    inline_modules: Vec<Module>,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Sep,
    Open,
    Close,
    Comma,
    Star,
    Other(char),
}

fn tokens(text: &str) -> Vec<(Tok, usize)> {
    let b: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_') {
                i += 1;
            }
            out.push((Tok::Ident(b[start..i].iter().collect()), line));
        } else if c == ':' && b.get(i + 1) == Some(&':') {
            out.push((Tok::Sep, line));
            i += 2;
        } else {
            let t = match c {
                '{' => Tok::Open,
                '}' => Tok::Close,
                ',' => Tok::Comma,
                '*' => Tok::Star,
                other => Tok::Other(other),
            };
            out.push((t, line));
            i += 1;
        }
    }
    out
}

/// The references and inline `mod NAME { .. }` blocks of one file whose module is `base`.
fn scan(text: &str, base: &Module) -> Scan {
    let toks = tokens(text);
    let mut scan = Scan {
        refs: Vec::new(),
        inline_modules: Vec::new(),
    };
    // Inline modules open: (name, brace depth inside it).
    let mut stack: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        let current = || {
            let mut m = base.clone();
            m.extend(stack.iter().map(|(n, _)| n.clone()));
            m
        };
        match &toks[i].0 {
            Tok::Open => depth += 1,
            Tok::Close => {
                if stack.last().is_some_and(|(_, d)| *d == depth) {
                    stack.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Tok::Ident(kw) if kw == "mod" => {
                if let (Some((Tok::Ident(name), _)), Some((Tok::Open, _))) =
                    (toks.get(i + 1), toks.get(i + 2))
                {
                    let name = name.clone();
                    let mut m = current();
                    m.push(name.clone());
                    scan.inline_modules.push(m);
                    stack.push((name, depth + 1));
                    depth += 1;
                    i += 3;
                    continue;
                }
            }
            Tok::Ident(head) if matches!(head.as_str(), "crate" | "super" | "self") => {
                let preceded_by_sep = i > 0 && toks[i - 1].0 == Tok::Sep;
                if !preceded_by_sep && toks.get(i + 1).is_some_and(|t| t.0 == Tok::Sep) {
                    let here = current();
                    let line = toks[i].1;
                    let (paths, next) = use_tree(&toks, i);
                    for p in paths {
                        if let Some(target) = resolve(&here, &p) {
                            let written = p.iter().filter(|s| s.as_str() != "self");
                            let written = written.cloned().collect::<Vec<_>>().join("::");
                            scan.refs.push((here.clone(), target, line, written));
                        }
                    }
                    i = next;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    scan
}

/// Reads a path or use tree starting at `toks[i]` (`crate::a::{b, c::d}`); returns every
/// full path it names and the index after it.
fn use_tree(toks: &[(Tok, usize)], mut i: usize) -> (Vec<Vec<String>>, usize) {
    let mut prefix = Vec::new();
    loop {
        match toks.get(i).map(|t| &t.0) {
            Some(Tok::Ident(s)) => {
                prefix.push(s.clone());
                i += 1;
                if toks.get(i).map(|t| &t.0) == Some(&Tok::Sep) {
                    i += 1;
                    continue;
                }
                return (vec![prefix], i);
            }
            Some(Tok::Open) => {
                i += 1;
                let mut out = Vec::new();
                loop {
                    match toks.get(i).map(|t| &t.0) {
                        Some(Tok::Close) => {
                            i += 1;
                            break;
                        }
                        Some(Tok::Comma) => i += 1,
                        None => break,
                        _ => {
                            let (paths, next) = use_tree(toks, i);
                            // Skip `as NAME` and anything else up to the next , or }.
                            i = next;
                            while !matches!(
                                toks.get(i).map(|t| &t.0),
                                None | Some(Tok::Comma | Tok::Close)
                            ) {
                                i += 1;
                            }
                            out.extend(paths.into_iter().map(|p| {
                                let mut full = prefix.clone();
                                full.extend(p);
                                full
                            }));
                        }
                    }
                }
                if out.is_empty() {
                    out.push(prefix);
                }
                return (out, i);
            }
            Some(Tok::Star) => return (vec![prefix], i + 1),
            _ => return (vec![prefix], i),
        }
    }
}

/// The absolute module path a written path names, from the module `here`.
fn resolve(here: &Module, path: &[String]) -> Option<Vec<String>> {
    let mut at: Vec<String>;
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            at = Vec::new();
            rest = &rest[1..];
        }
        Some("self") => {
            at = here.clone();
            rest = &rest[1..];
        }
        Some("super") => {
            at = here.clone();
            while rest.first().map(String::as_str) == Some("super") {
                at.pop()?;
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    at.extend(rest.iter().filter(|s| s.as_str() != "self").cloned());
    Some(at)
}

/// Each cycle once, as the list of modules around it, found from every strongly connected
/// component with more than one module.
fn cycles(edges: &BTreeMap<(Module, Module), Site>) -> Vec<Vec<Module>> {
    let mut adj: BTreeMap<&Module, Vec<&Module>> = BTreeMap::new();
    for (a, b) in edges.keys() {
        adj.entry(a).or_default().push(b);
        adj.entry(b).or_default();
    }
    let mut found = Vec::new();
    let mut reported: BTreeSet<BTreeSet<&Module>> = BTreeSet::new();
    for &start in adj.keys() {
        // The shortest way back to `start`, by breadth-first search.
        let mut prev: BTreeMap<&Module, &Module> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut back = None;
        while let Some(m) = queue.pop_front() {
            for &n in &adj[m] {
                if n == start {
                    back = Some(m);
                    break;
                }
                if !prev.contains_key(n) {
                    prev.insert(n, m);
                    queue.push_back(n);
                }
            }
            if back.is_some() {
                break;
            }
        }
        let Some(mut m) = back else { continue };
        let mut cycle = vec![m];
        while m != start {
            m = prev[m];
            cycle.push(m);
        }
        cycle.reverse();
        if reported.insert(cycle.iter().copied().collect()) {
            found.push(cycle.into_iter().cloned().collect());
        }
    }
    found
}

fn describe(cycle: &[Module], edges: &BTreeMap<(Module, Module), Site>) -> String {
    let name = |m: &Module| m.join("::");
    let mut out = String::new();
    for (i, a) in cycle.iter().enumerate() {
        let b = &cycle[(i + 1) % cycle.len()];
        let site = &edges[&(a.clone(), b.clone())];
        let _ = write!(
            out,
            "{} -> {} ({}:{} `{}`); ",
            name(a),
            name(b),
            site.file.display(),
            site.line,
            site.path
        );
    }
    out
}

#[test]
fn the_checker_sees_a_circle_between_siblings_and_none_through_nesting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path();
    let write = |p: &str, text: &str| {
        let f = src.join(p);
        std::fs::create_dir_all(f.parent().expect("a parent")).expect("mkdir");
        std::fs::write(f, text).expect("write");
    };
    write("lib.rs", "mod a; mod b; mod n;");
    write(
        "a.rs",
        "use crate::b::{self, Thing as T};\nfn f() { let s = \"crate::n::x\"; }",
    );
    write("b.rs", "fn g() { crate::a::f(); }");
    write("n/mod.rs", "mod inner; use self::inner::X; struct Y;");
    write(
        "n/inner.rs",
        "use super::Y; pub struct X; #[cfg(test)] mod tests { use super::*; }",
    );
    let graph = crate_graph(src, src);
    let found = cycles(&graph);
    assert_eq!(found.len(), 1, "{found:?}");
    let names: BTreeSet<String> = found[0].iter().map(|m| m.join("::")).collect();
    assert_eq!(names, BTreeSet::from(["a".to_string(), "b".to_string()]));
    // The string literal naming n made no edge.
    assert!(!graph.keys().any(|(_, b)| b == &vec!["n".to_string()]));
}

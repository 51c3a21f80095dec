//! The import graph of `node/src` has no circle.
//!
//! A small, deliberately simple reader of the sources (no `syn`):
//! - every `.rs` file under `src/` is a module (`lib.rs` the root, `x/mod.rs` or `x.rs`
//!   the directory module `x`, `x/y.rs` its child `y`); `main.rs` (the binary) is left
//!   out;
//! - comments, string and character literals are blanked first, then every item marked
//!   `#[cfg(test)]` (a test module, a test-only function or `mod tests;`, whose file is
//!   then left out as well) is skipped;
//! - what remains is scanned for paths starting with `crate::` or `super::` (groups
//!   `crate::{a, b::c}` included). A path names a module when its segments match the
//!   module tree; an item re-exported by a directory module (`pub use child::Item;`) is
//!   taken to live in that child.
//!
//! A path from module `P` to module `Q` is an edge in the graph of their nearest common
//! directory `D`: from `P`'s child of `D` to `Q`'s child of `D`. So the graph of the
//! crate root is that of the top-level modules (a directory counts as one), and each
//! directory has the graph of its files. A directory's own file (`mod.rs`) is the
//! directory, not one of its files: its children may use its items and it theirs.
//!
//! The test fails when any of those graphs has a circle, printing it with the lines
//! that make each edge, and when a file of the transfer engine or the upload server
//! names the cluster implementation (they reach the cluster through the traits of
//! `replica`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path below the crate root, e.g. `["transfer", "helper"]`.
type ModPath = Vec<String>;

/// One source file, read and cleaned.
struct Source {
    /// Its module path.
    module: ModPath,
    /// The file, for messages.
    path: PathBuf,
    /// The code with comments, literals and test-only items blanked.
    code: String,
}

/// An edge and the text that makes it.
type Evidence = BTreeMap<(String, String), Vec<String>>;

#[test]
fn node_modules_import_no_circle() {
    let sources = read_sources();
    let tree: BTreeSet<ModPath> = sources.iter().map(|s| s.module.clone()).collect();
    let reexports = reexports(&sources, &tree);
    // Graph per directory: directory path -> (from, to) -> evidence.
    let mut graphs: BTreeMap<ModPath, Evidence> = BTreeMap::new();
    for source in &sources {
        for (target, text) in references(source) {
            let target = resolve(&target, &tree, &reexports);
            let common = source.module.iter().zip(&target).take_while(|(a, b)| a == b).count();
            let (Some(from), Some(to)) = (source.module.get(common), target.get(common)) else {
                continue; // a parent naming its child, or a child its parent
            };
            let dir = source.module[..common].to_vec();
            let line = format!("{}: {text}", source.path.display());
            graphs
                .entry(dir)
                .or_default()
                .entry((from.clone(), to.clone()))
                .or_default()
                .push(line);
        }
    }
    let mut failures = Vec::new();
    for (dir, edges) in &graphs {
        let mut edges = edges.clone();
        // Every circle, one at a time: each found is reported, then cut at its last edge.
        while let Some(cycle) = find_cycle(&edges) {
            let name = if dir.is_empty() { "crate".to_owned() } else { dir.join("::") };
            let mut text =
                format!("a circle among the modules of `{name}`: {}\n", cycle.join(" -> "));
            for pair in cycle.windows(2) {
                let key = (pair[0].clone(), pair[1].clone());
                for line in edges[&key].iter().take(3) {
                    text.push_str(&format!("    {} -> {}: {line}\n", pair[0], pair[1]));
                }
            }
            failures.push(text);
            let n = cycle.len();
            edges.remove(&(cycle[n - 2].clone(), cycle[n - 1].clone()));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn transfers_and_uploads_use_the_cluster_only_through_traits() {
    let sources = read_sources();
    let tree: BTreeSet<ModPath> = sources.iter().map(|s| s.module.clone()).collect();
    let reexports = reexports(&sources, &tree);
    let mut offending = Vec::new();
    for source in &sources {
        let first = source.module.first().map(String::as_str).unwrap_or("");
        if first != "transfer" && !first.starts_with("upload_server") {
            continue;
        }
        for (target, text) in references(source) {
            let target = resolve(&target, &tree, &reexports);
            if target.first().is_some_and(|t| t == "cluster" || t == "service") {
                offending.push(format!("{}: {text}", source.path.display()));
            }
        }
    }
    assert!(
        offending.is_empty(),
        "they name the cluster implementation:\n{}",
        offending.join("\n")
    );
}

#[test]
fn the_reader_finds_a_circle() {
    let edges: Evidence = [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]
        .into_iter()
        .map(|(f, t)| ((f.to_owned(), t.to_owned()), vec![String::new()]))
        .collect();
    assert_eq!(find_cycle(&edges), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
    let code = clean(
        "use crate::{a::X, b};\n// crate::c\nlet s = \"crate::d\";\n#[cfg(test)]\nmod tests { use crate::e; }\nfn f<'a>(x: &'a str) -> char { '\"' }\nuse super::super::f::G;",
    );
    let source =
        Source { module: vec!["p".into(), "q".into(), "r".into()], path: "x".into(), code };
    let found: Vec<ModPath> = references(&source).into_iter().map(|(t, _)| t).collect();
    let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<ModPath>();
    assert_eq!(found, vec![names(&["a", "X"]), names(&["b"]), names(&["p", "f", "G"])]);
}

/// Reads and cleans every module file of `node/src`.
fn read_sources() -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect(&root, &mut files);
    let mut sources: Vec<Source> = files
        .into_iter()
        .filter_map(|path| {
            let module = module_of(&root, &path)?;
            let text = std::fs::read_to_string(&path).ok()?;
            Some(Source { module, path, code: clean(&text) })
        })
        .collect();
    // Files of `#[cfg(test)] mod x;` declarations are test code.
    let mut test_only: BTreeSet<ModPath> = BTreeSet::new();
    for source in &sources {
        let raw = std::fs::read_to_string(&source.path).unwrap_or_default();
        let blanked = blank(&raw);
        for name in test_modules(&blanked) {
            let mut module = source.module.clone();
            module.push(name);
            test_only.insert(module);
        }
    }
    sources.retain(|s| !test_only.iter().any(|t| s.module.starts_with(t)));
    sources
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/a/b.rs` -> `[a, b]`, `src/a/mod.rs` -> `[a]`, `src/lib.rs` -> `[]`.
fn module_of(root: &Path, path: &Path) -> Option<ModPath> {
    let relative = path.strip_prefix(root).ok()?;
    let mut parts: ModPath =
        relative.iter().map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned()).collect();
    match parts.last().map(String::as_str) {
        Some("main") if parts.len() == 1 => return None,
        Some("lib") if parts.len() == 1 => parts.clear(),
        Some("mod") => {
            parts.pop();
        }
        _ => {}
    }
    Some(parts)
}

/// The code without comments and literals (blanked), then without `#[cfg(test)]` items.
fn clean(text: &str) -> String {
    strip_test_items(&blank(text))
}

/// Replaces comments, string and char literals by spaces (newlines kept).
fn blank(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let space = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(space(chars[i]));
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !ident_before(&chars, i) {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                match chars.get(j) {
                    None => break,
                    Some('"') if (1..=hashes).all(|k| chars.get(j + k) == Some(&'#')) => {
                        j += 1 + hashes;
                        break;
                    }
                    Some(_) => j += 1,
                }
            }
            for &k in &chars[i..j.min(chars.len())] {
                out.push(space(k));
            }
            i = j;
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < chars.len() {
                    out.push(space(chars[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' && (chars.get(i + 2) == Some(&'\'') || next == Some('\\')) {
            // A char literal ('x' or '\n', '\''), not a lifetime.
            let mut j = i + 1;
            if chars.get(j) == Some(&'\\') {
                j += 2;
            } else {
                j += 1;
            }
            while j < chars.len() && chars[j] != '\'' {
                j += 1;
            }
            for _ in i..=j.min(chars.len() - 1) {
                out.push(' ');
            }
            i = j + 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_before(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// Removes every item that follows a `#[cfg(test)]` attribute: up to its `;`, or its
/// whole `{ ... }` block if one opens first.
fn strip_test_items(code: &str) -> String {
    const MARK: &str = "#[cfg(test)]";
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find(MARK) {
        out.push_str(&rest[..at]);
        let after = &rest[at + MARK.len()..];
        let mut depth = 0usize;
        let mut end = after.len();
        for (k, ch) in after.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = k + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = k + 1;
                    break;
                }
                _ => {}
            }
        }
        out.extend(
            rest[at..at + MARK.len() + end].chars().map(|c| if c == '\n' { '\n' } else { ' ' }),
        );
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Names of `#[cfg(test)] mod x;` declarations in blanked code.
fn test_modules(code: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        rest = &rest[at + "#[cfg(test)]".len()..];
        let item = rest.trim_start();
        let item = item.strip_prefix("pub(crate) ").unwrap_or(item);
        if let Some(decl) = item.strip_prefix("mod ") {
            let name: String =
                decl.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if decl[name.len()..].trim_start().starts_with(';') {
                names.push(name);
            }
        }
    }
    names
}

/// Every `crate::` or `super::` path of `source`, as an absolute module path (its
/// segments up to the first that is not an identifier), with the text found.
fn references(source: &Source) -> Vec<(ModPath, String)> {
    let code = &source.code;
    let bytes = code.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < code.len() {
        let starts = (code[i..].starts_with("crate::") || code[i..].starts_with("super::"))
            && (i == 0
                || !(bytes[i - 1].is_ascii_alphanumeric()
                    || bytes[i - 1] == b'_'
                    || bytes[i - 1] == b':'));
        if !starts {
            i += 1;
            continue;
        }
        let mut base: ModPath = Vec::new();
        let mut j = i;
        if code[j..].starts_with("crate::") {
            j += "crate::".len();
        } else {
            base = source.module.clone();
            while code[j..].starts_with("super::") {
                base.pop();
                j += "super::".len();
            }
        }
        let (paths, end) = parse_tail(code, j);
        let text: String = code[i..end].split_whitespace().collect::<Vec<_>>().join(" ");
        for tail in paths {
            let mut full = base.clone();
            full.extend(tail.into_iter().filter(|s| s != "self"));
            found.push((full, text.clone()));
        }
        i = end.max(i + 1);
    }
    found
}

/// Parses `a::b::C`, `a::{b, c::D}` or `{a, b}` at `at`: the paths, and where they end.
fn parse_tail(code: &str, mut at: usize) -> (Vec<ModPath>, usize) {
    let bytes = code.as_bytes();
    let skip_ws = |mut k: usize| {
        while k < bytes.len() && bytes[k].is_ascii_whitespace() {
            k += 1;
        }
        k
    };
    let mut prefix: ModPath = Vec::new();
    loop {
        at = skip_ws(at);
        if at < bytes.len() && bytes[at] == b'{' {
            let mut paths = Vec::new();
            at += 1;
            loop {
                at = skip_ws(at);
                if at >= bytes.len() || bytes[at] == b'}' {
                    return (paths, (at + 1).min(bytes.len()));
                }
                if bytes[at] == b',' {
                    at += 1;
                    continue;
                }
                let (inner, end) = parse_tail(code, at);
                for path in inner {
                    let mut full = prefix.clone();
                    full.extend(path);
                    paths.push(full);
                }
                // Skip `as name` and anything else up to the next `,` or `}`.
                at = end;
                while at < bytes.len() && bytes[at] != b',' && bytes[at] != b'}' {
                    if bytes[at] == b'{' {
                        break;
                    }
                    at += 1;
                }
            }
        }
        let start = at;
        while at < bytes.len() && (bytes[at].is_ascii_alphanumeric() || bytes[at] == b'_') {
            at += 1;
        }
        if start == at {
            if bytes.get(at) == Some(&b'*') {
                at += 1;
            }
            return (vec![prefix], at);
        }
        prefix.push(code[start..at].to_owned());
        if code[at..].starts_with("::") {
            at += 2;
        } else {
            return (vec![prefix], at);
        }
    }
}

/// Items a directory module re-exports from a child: (directory, item) -> child.
fn reexports(sources: &[Source], tree: &BTreeSet<ModPath>) -> BTreeMap<(ModPath, String), String> {
    let mut map = BTreeMap::new();
    for source in sources {
        for (k, _) in source.code.match_indices("use ") {
            let before = source.code[..k].trim_end();
            if !(before.ends_with("pub") || before.ends_with(')')) {
                continue;
            }
            let (paths, _) = parse_tail(&source.code, k + 4);
            for path in paths {
                let path: ModPath = path.into_iter().filter(|s| s != "self").collect();
                let (Some(child), Some(item)) = (path.first(), path.last()) else { continue };
                let mut module = source.module.clone();
                module.push(child.clone());
                if path.len() > 1 && tree.contains(&module) {
                    map.insert((source.module.clone(), item.clone()), child.clone());
                }
            }
        }
    }
    map
}

/// The longest prefix of `path` that is a module, then, if the next segment is an item
/// re-exported from a child module, that child.
fn resolve(
    path: &ModPath,
    tree: &BTreeSet<ModPath>,
    reexports: &BTreeMap<(ModPath, String), String>,
) -> ModPath {
    let mut module: ModPath = Vec::new();
    for segment in path {
        let mut next = module.clone();
        next.push(segment.clone());
        if tree.contains(&next) {
            module = next;
        } else {
            if let Some(child) = reexports.get(&(module.clone(), segment.clone())) {
                module.push(child.clone());
            }
            break;
        }
    }
    module
}

/// A circle in the graph, as its nodes with the first repeated at the end.
fn find_cycle(edges: &Evidence) -> Option<Vec<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        next.entry(from).or_default().push(to);
    }
    // Depth-first search: 1 = on the stack, 2 = done.
    let mut color: BTreeMap<&str, u8> = BTreeMap::new();
    fn visit<'a>(
        node: &'a str,
        next: &BTreeMap<&'a str, Vec<&'a str>>,
        color: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        color.insert(node, 1);
        stack.push(node);
        for &to in next.get(node).map(Vec::as_slice).unwrap_or(&[]) {
            match color.get(to) {
                Some(1) => {
                    let start = stack.iter().position(|n| *n == to).unwrap_or(0);
                    let mut cycle: Vec<String> =
                        stack[start..].iter().map(|s| (*s).to_owned()).collect();
                    cycle.push(to.to_owned());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(cycle) = visit(to, next, color, stack) {
                        return Some(cycle);
                    }
                }
            }
        }
        stack.pop();
        color.insert(node, 2);
        None
    }
    let nodes: Vec<&str> = next.keys().copied().collect();
    for node in nodes {
        if !color.contains_key(node) {
            let mut stack = Vec::new();
            if let Some(cycle) = visit(node, &next, &mut color, &mut stack) {
                return Some(cycle);
            }
        }
    }
    None
}

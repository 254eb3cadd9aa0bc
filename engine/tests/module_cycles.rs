//! DESIGN.md § Layout: "Modules import in one direction … no cycles."
//!
//! This test reads the `ricochet` library's sources (the module tree
//! declared from `src/lib.rs`; the binary's own modules are not part of it)
//! and builds the dependency graph between its top-level modules — `admin`,
//! `rt`, `store`, … — from every `crate::…` path and every `super::…` path
//! that climbs to the crate root, in code and in tests alike (comments and
//! string literals are skipped). A submodule counts as its top-level
//! module. It fails listing every cycle, with one `file:line` per edge, so
//! the fix — move the shared item into a leaf module, or invert the
//! dependency — can start from the message.
//!
//! Deliberately dependency-free: a small lexer that knows comments, string,
//! raw-string and char literals, and brace-delimited inline modules is
//! enough, because only paths matter, not types.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[test]
fn engine_crate_has_no_module_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = read_tree(&src);
    let graph = Graph::build(&files);
    assert!(
        graph.modules.len() >= 5,
        "found only {:?} under {}: is the module walk broken?",
        graph.modules,
        src.display()
    );
    // `PRINT_MODULE_GRAPH=1 cargo test -p ricochet --test module_cycles --
    // --nocapture` shows every edge with its first site.
    if std::env::var_os("PRINT_MODULE_GRAPH").is_some() {
        for (from, tos) in &graph.edges {
            for (to, (file, line)) in tos {
                println!("{from} -> {to}: {file}:{line}");
            }
        }
    }
    let report = graph.cycle_report();
    assert!(report.is_empty(), "{report}");
}

/// Walks the module tree from `lib.rs` through `mod name;` declarations
/// (`name.rs` or `name/mod.rs` beside the declaring module's directory).
/// Returns `(path relative to the crate root, module path, text)`.
fn read_tree(src: &Path) -> Vec<SourceFile> {
    let mut out = Vec::new();
    let mut todo = vec![(src.join("lib.rs"), Vec::<String>::new())];
    while let Some((file, module)) = todo.pop() {
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        // Children of `lib.rs` and `x/mod.rs` live in that directory; of
        // `x.rs`, in `x/`.
        let dir: PathBuf = match file.file_name().and_then(|n| n.to_str()) {
            Some("lib.rs" | "mod.rs") => file.parent().unwrap().to_path_buf(),
            _ => file.with_extension(""),
        };
        for child in file_modules(&clean(&text)) {
            let mut path = module.clone();
            path.push(child.clone());
            let flat = dir.join(format!("{child}.rs"));
            let nested = dir.join(&child).join("mod.rs");
            let found = if flat.exists() { flat } else { nested };
            todo.push((found, path));
        }
        let rel = file.strip_prefix(src.parent().unwrap()).unwrap_or(&file).display().to_string();
        out.push(SourceFile { name: rel, module, text });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// One source file of the crate.
struct SourceFile {
    /// For messages: `src/admin/mod.rs`.
    name: String,
    /// The file's module path: `["admin"]` for `src/admin/mod.rs`, empty
    /// for `lib.rs`.
    module: Vec<String>,
    text: String,
}

/// Top-level module dependency graph: `from → to → first (file, line)`.
struct Graph {
    modules: BTreeSet<String>,
    edges: BTreeMap<String, BTreeMap<String, (String, usize)>>,
}

impl Graph {
    fn build(files: &[SourceFile]) -> Graph {
        let modules: BTreeSet<String> =
            files.iter().filter(|f| f.module.len() == 1).map(|f| f.module[0].clone()).collect();
        let mut edges: BTreeMap<String, BTreeMap<String, (String, usize)>> = BTreeMap::new();
        for f in files {
            let Some(from) = f.module.first() else { continue };
            for (line, to) in references(&f.module, &clean(&f.text)) {
                if &to != from && modules.contains(&to) {
                    edges
                        .entry(from.clone())
                        .or_default()
                        .entry(to)
                        .or_insert_with(|| (f.name.clone(), line));
                }
            }
        }
        Graph { modules, edges }
    }

    fn successors(&self, m: &str) -> impl Iterator<Item = &String> {
        self.edges.get(m).into_iter().flat_map(|e| e.keys())
    }

    /// Every elementary cycle, each once (starting from its least module).
    fn cycles(&self) -> Vec<Vec<String>> {
        let mut found = Vec::new();
        for start in &self.modules {
            let mut path = vec![start.clone()];
            self.walk(start, &mut path, &mut found);
        }
        found
    }

    fn walk(&self, start: &str, path: &mut Vec<String>, found: &mut Vec<Vec<String>>) {
        const LIMIT: usize = 200;
        let last = path.last().unwrap().clone();
        for next in self.successors(&last) {
            if found.len() >= LIMIT {
                return;
            }
            if next == start {
                found.push(path.clone());
            } else if next.as_str() > start && !path.contains(next) {
                path.push(next.clone());
                self.walk(start, path, found);
                path.pop();
            }
        }
    }

    /// Empty when acyclic; otherwise every cycle with its edges' sites.
    fn cycle_report(&self) -> String {
        let cycles = self.cycles();
        let mut out = String::new();
        if cycles.is_empty() {
            return out;
        }
        let _ = writeln!(
            out,
            "{} module cycle(s) in the ricochet crate (DESIGN.md § Layout: modules import in \
             one direction; move what both sides need into a leaf module):",
            cycles.len()
        );
        for cycle in &cycles {
            let _ = writeln!(out, "\n  {} -> {}", cycle.join(" -> "), cycle[0]);
            for (i, from) in cycle.iter().enumerate() {
                let to = &cycle[(i + 1) % cycle.len()];
                let (file, line) = &self.edges[from][to];
                let _ = writeln!(out, "    {from} -> {to}: {file}:{line}");
            }
        }
        out
    }
}

/// The `mod name;` declarations at a file's top level (not inline modules).
fn file_modules(code: &str) -> Vec<String> {
    let toks = tokens(code);
    let mut depth = 0usize;
    let mut out = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        match t.text.as_str() {
            "{" => depth += 1,
            "}" => depth = depth.saturating_sub(1),
            "mod" if depth == 0 => {
                if let (Some(name), Some(semi)) = (toks.get(i + 1), toks.get(i + 2))
                    && semi.text == ";"
                {
                    out.push(name.text.clone());
                }
            }
            _ => {}
        }
    }
    out
}

/// `(line, top-level module)` for every path that leaves the file's
/// module for another top-level one: `crate::m…`, `crate::{m…, n…}`, and
/// `super::…` chains that climb to the crate root.
fn references(file_module: &[String], code: &str) -> Vec<(usize, String)> {
    let toks = tokens(code);
    let mut out = Vec::new();
    // Inline modules (`mod tests { … }`) open at these brace depths.
    let mut inline: Vec<usize> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        let t = &toks[i];
        match t.text.as_str() {
            "{" => {
                if i >= 2 && toks[i - 2].text == "mod" {
                    inline.push(depth);
                }
                depth += 1;
            }
            "}" => {
                depth = depth.saturating_sub(1);
                if inline.last() == Some(&depth) {
                    inline.pop();
                }
            }
            "crate" if !(i > 0 && toks[i - 1].text == "$") => {
                if let Some(rest) = after_sep(&toks, i) {
                    for name in first_segments(&toks, rest) {
                        out.push((t.line, name));
                    }
                }
            }
            "super" if !(i >= 2 && toks[i - 1].text == "::" && toks[i - 2].text == "super") => {
                // Count the chain: super::super::…
                let mut ups = 1;
                let mut j = i;
                while let Some(k) = after_sep(&toks, j) {
                    if toks[k].text == "super" {
                        ups += 1;
                        j = k;
                    } else {
                        break;
                    }
                }
                let here = file_module.len() + inline.len();
                if ups == here
                    && let Some(rest) = after_sep(&toks, j)
                {
                    for name in first_segments(&toks, rest) {
                        out.push((t.line, name));
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Index of the token after `toks[i] ::`, if that is what follows.
fn after_sep(toks: &[Token], i: usize) -> Option<usize> {
    (toks.get(i + 1)?.text == "::" && i + 2 < toks.len()).then_some(i + 2)
}

/// The first segment of a path, or of every path in a `{ … }` use group
/// (`{a::b, c, d::{e, f}}` → a, c, d).
fn first_segments(toks: &[Token], at: usize) -> Vec<String> {
    if toks[at].text != "{" {
        return vec![toks[at].text.clone()];
    }
    let mut out = Vec::new();
    let mut depth = 0;
    let mut expect_first = true;
    for t in &toks[at..] {
        match t.text.as_str() {
            "{" => {
                depth += 1;
                expect_first = depth == 1;
            }
            "}" => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            "," => expect_first = depth == 1,
            s if expect_first => {
                if s != "self" {
                    out.push(s.to_owned());
                }
                expect_first = false;
            }
            _ => {}
        }
    }
    out
}

struct Token {
    text: String,
    line: usize,
}

/// Identifiers, `::`, and single punctuation characters, with 1-based lines.
fn tokens(code: &str) -> Vec<Token> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'\n' {
            line += 1;
            i += 1;
        } else if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'_' || c.is_ascii_alphanumeric() {
            let s = i;
            while i < b.len() && (b[i] == b'_' || b[i].is_ascii_alphanumeric()) {
                i += 1;
            }
            out.push(Token { text: code[s..i].to_owned(), line });
        } else if c == b':' && b.get(i + 1) == Some(&b':') {
            out.push(Token { text: "::".into(), line });
            i += 2;
        } else {
            let len = code[i..].chars().next().map_or(1, char::len_utf8);
            out.push(Token { text: code[i..i + len].to_owned(), line });
            i += len;
        }
    }
    out
}

/// The source with comments and the contents of string and char literals
/// replaced by spaces (newlines kept, so lines still count).
fn clean(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let blank = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend(bytes.iter().map(|&c| if c == b'\n' { b'\n' } else { b' ' }));
    };
    let ident = |c: u8| c == b'_' || c.is_ascii_alphanumeric();
    let mut i = 0;
    while i < b.len() {
        let rest = &b[i..];
        let prev_ident = i > 0 && ident(b[i - 1]);
        if rest.starts_with(b"//") {
            let end = rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest.starts_with(b"/*") {
            let (mut depth, mut j) = (1, 2);
            while j < rest.len() && depth > 0 {
                if rest[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if rest[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            blank(&mut out, &rest[..j]);
            i += j;
        } else if !prev_ident && let Some(j) = raw_string_len(rest) {
            blank(&mut out, &rest[..j]);
            i += j;
        } else if c_is(rest, b'"') || (!prev_ident && rest.starts_with(b"b\"")) {
            let mut j = rest.iter().position(|&c| c == b'"').unwrap() + 1;
            while j < rest.len() && rest[j] != b'"' {
                j += if rest[j] == b'\\' { 2 } else { 1 };
            }
            let j = (j + 1).min(rest.len());
            blank(&mut out, &rest[..j]);
            i += j;
        } else if c_is(rest, b'\'') {
            // A char literal ('x', '\n', '\u{1F600}', 'é') or a lifetime ('a).
            let len = if rest.get(1) == Some(&b'\\') {
                rest.get(3..).and_then(|r| r.iter().position(|&c| c == b'\'')).map(|p| p + 4)
            } else {
                // `'` is ASCII, so `i + 1` is a char boundary.
                src[i + 1..]
                    .chars()
                    .next()
                    .map(char::len_utf8)
                    .filter(|&n| rest.get(1 + n) == Some(&b'\''))
                    .map(|n| n + 2)
            };
            match len {
                Some(j) => {
                    blank(&mut out, &rest[..j]);
                    i += j;
                }
                None => {
                    out.push(b'\'');
                    i += 1;
                }
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    // Only ASCII bytes were replaced, each by one ASCII byte, and multi-byte
    // characters outside literals and comments were copied whole.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn c_is(rest: &[u8], c: u8) -> bool {
    rest.first() == Some(&c)
}

/// Length of a raw string literal (`r"…"`, `r#"…"#`, `br#"…"#`) at the
/// start of `rest`, if one starts there.
fn raw_string_len(rest: &[u8]) -> Option<usize> {
    let start = if rest.starts_with(b"br") {
        2
    } else if rest.starts_with(b"r") {
        1
    } else {
        return None;
    };
    let hashes = rest[start..].iter().take_while(|&&c| c == b'#').count();
    if rest.get(start + hashes) != Some(&b'"') {
        return None;
    }
    let body = start + hashes + 1;
    let mut close = vec![b'"'];
    close.extend(std::iter::repeat_n(b'#', hashes));
    let end = rest[body..].windows(close.len()).position(|w| w == close.as_slice())?;
    Some(body + end + close.len())
}

// The checker itself, on small made-up crates: it must be able to fail.

fn fake(files: &[(&str, &str)]) -> Graph {
    let files: Vec<SourceFile> = files
        .iter()
        .map(|(path, text)| {
            let module: Vec<String> = path
                .trim_end_matches(".rs")
                .split('/')
                .filter(|s| *s != "mod" && *s != "lib")
                .map(str::to_owned)
                .collect();
            SourceFile { name: format!("src/{path}"), module, text: (*text).to_owned() }
        })
        .collect();
    Graph::build(&files)
}

#[test]
fn a_cycle_is_reported_with_a_site_per_edge() {
    let g = fake(&[
        ("lib.rs", "pub mod a; pub mod b; pub mod c;"),
        ("a/mod.rs", "mod x;\nuse crate::b::Thing;"),
        ("a/x.rs", "fn f() {}"),
        ("b.rs", "// use crate::c;\n\nfn g() { crate::c::h(); }"),
        ("c.rs", "\nuse crate::{\n    a::x::Y,\n};"),
    ]);
    assert_eq!(g.cycles(), vec![vec!["a".to_owned(), "b".into(), "c".into()]]);
    let report = g.cycle_report();
    assert!(report.contains("a -> b -> c -> a"), "{report}");
    assert!(report.contains("a -> b: src/a/mod.rs:2"), "{report}");
    assert!(report.contains("b -> c: src/b.rs:3"), "{report}");
    assert!(report.contains("c -> a: src/c.rs:2"), "{report}");
}

#[test]
fn comments_strings_and_inner_paths_are_not_edges() {
    let g = fake(&[
        ("lib.rs", "pub mod a; pub mod b;"),
        ("a.rs", "use crate::b::X;"),
        (
            "b.rs",
            "//! see [`crate::a`]\n/* crate::a /* nested */ crate::a */\n\
             const S: &str = \"crate::a\"; const R: &str = r#\"crate::a \" \"#;\n\
             const C: char = '\"'; fn f<'a>(x: &'a str) -> &'a str { x }\n\
             use self::inner::crate_a; mod inner { pub fn crate_a() {} }",
        ),
    ]);
    assert!(g.cycles().is_empty(), "{}", g.cycle_report());
    assert_eq!(g.edges["a"].keys().collect::<Vec<_>>(), ["b"]);
}

#[test]
fn super_paths_resolve_through_files_and_inline_modules() {
    // `super::` at a top-level file's root reaches the crate root; from
    // its inline `mod tests`, or from a submodule's file (and `super::super`
    // from that file's `mod tests`), it stays in the top-level module.
    let g = fake(&[
        ("lib.rs", "pub mod a; pub mod b;"),
        ("a/mod.rs", "mod x;"),
        ("a/x.rs", "use super::y; mod tests { use super::super::z; }"),
        ("b.rs", "use super::a::Q; mod tests { use super::*; }"),
    ]);
    assert_eq!(g.edges.len(), 1, "{:?}", g.edges.keys().collect::<Vec<_>>());
    assert_eq!(g.edges["b"]["a"], ("src/b.rs".to_owned(), 1));
}

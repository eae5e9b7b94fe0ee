//! The core's layering, checked from its source: every `crate::` (and `super::`) path in
//! non-test code is an import edge from one module (a file) to another, and
//!
//! - no edge points up a layer (`base` → `infra` → `identity` → `factors` → `signin` →
//!   `account` | `admin` | `ops` → `dispatch`; the crate root, which composes `App`, is exempt);
//! - no module but `dispatch` imports a handler module (a file that registers commands with
//!   `fn specs`), and a handler module makes nothing public but `specs`;
//! - the modules import one another without a circle.
//!
//! `docs/architecture.md` explains the layers; this test keeps them from rotting.

#![allow(clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Layers, bottom first. A module may import its own layer and those below.
const LAYERS: &[&[&str]] = &[
    &["base"],
    &["infra"],
    &["identity"],
    &["factors"],
    &["signin"],
    &["account", "admin", "ops"],
    &["dispatch"],
];

/// Root-level modules outside the layering (test support).
const EXEMPT: &[&str] = &["testkit"];

struct Module {
    /// Whether the module is a folder (`mod.rs`).
    dir: bool,
    /// Source without its `#[cfg(test)]` tail and without comments.
    code: String,
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every module of the crate by path (`factors::totp::commands`), `crate` for the root.
fn modules() -> BTreeMap<String, Module> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(dir).expect("read src") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let root = src_dir();
    let mut files = Vec::new();
    walk(&root, &mut files);
    files
        .into_iter()
        .map(|f| {
            let rel = f.strip_prefix(&root).expect("under src");
            let mut segs: Vec<String> = rel
                .iter()
                .map(|s| s.to_string_lossy().trim_end_matches(".rs").to_owned())
                .collect();
            let dir = matches!(segs.last().map(String::as_str), Some("mod" | "lib"));
            if dir {
                segs.pop();
            }
            let path = if segs.is_empty() {
                "crate".to_owned()
            } else {
                segs.join("::")
            };
            let text = fs::read_to_string(&f).expect("read module");
            (
                path,
                Module {
                    dir,
                    code: production_code(&text),
                },
            )
        })
        .collect()
}

/// The text before the first inline test module (`#[cfg(test)]` then `mod … {`), with `//` comments
/// removed. Test-only items elsewhere are kept, and held to the same rules.
fn production_code(text: &str) -> String {
    let cut = text
        .match_indices("#[cfg(test)]")
        .find(|(i, m)| {
            let item = text[i + m.len()..].trim_start();
            item.starts_with("mod ") && item.lines().next().is_some_and(|l| l.ends_with('{'))
        })
        .map_or(text.len(), |(i, _)| i);
    text[..cut]
        .lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths named after each `crate::` / `super::` in `code`, brace groups expanded, as
/// absolute segment lists.
fn paths(module: &str, code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    for anchor in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(anchor) {
            let at = from + i;
            from = at + anchor.len();
            let preceded = at > 0 && {
                let c = bytes[at - 1];
                c.is_ascii_alphanumeric() || c == b'_' || c == b':'
            };
            if preceded {
                continue;
            }
            // `super` is the parent of the module, whatever file holds it.
            let base: Vec<String> = if anchor == "crate::" || module == "crate" {
                Vec::new()
            } else {
                let mut segs: Vec<String> = module.split("::").map(str::to_owned).collect();
                segs.pop();
                segs
            };
            expand(&code[from..], base, &mut out);
        }
    }
    out
}

/// Reads one path (or brace group) at the start of `rest`, prefixed by `base`.
fn expand(rest: &str, base: Vec<String>, out: &mut Vec<Vec<String>>) {
    let rest = rest.trim_start();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut depth = 1;
        let mut end = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let group = &inner[..end];
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&group[start..i], base.clone(), out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&group[start..], base, out);
        return;
    }
    let ident_end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    let ident = &rest[..ident_end];
    if ident.is_empty() {
        out.push(base);
        return;
    }
    let mut segs = base;
    if ident != "self" {
        segs.push(ident.to_owned());
    }
    let after = &rest[ident_end..];
    match after.strip_prefix("::") {
        Some(next) => expand(next, segs, out),
        None => out.push(segs),
    }
}

/// The module a path lands in: its longest prefix that names a module file. A name the root
/// re-exports (`crate::Dispatcher`) lands in the module that defines it; only what the root
/// itself defines (`App`, `Ctx`) lands in the root.
fn target(mods: &BTreeMap<String, Module>, segs: &[String]) -> String {
    let found = (1..=segs.len())
        .rev()
        .map(|n| segs[..n].join("::"))
        .find(|p| mods.contains_key(p));
    match (found, segs.first()) {
        (Some(m), _) => m,
        (None, Some(first)) => root_reexports(mods)
            .remove(first)
            .unwrap_or_else(|| "crate".to_owned()),
        (None, None) => "crate".to_owned(),
    }
}

/// The root's `pub use path::{Names};` lines: each name and the module it comes from.
fn root_reexports(mods: &BTreeMap<String, Module>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(root) = mods.get("crate") else {
        return out;
    };
    for stmt in root.code.split(';') {
        let Some(rest) = stmt.trim().strip_prefix("pub use ") else {
            continue;
        };
        let mut paths = Vec::new();
        expand(rest, Vec::new(), &mut paths);
        for p in paths {
            if let Some((name, module)) = p.split_last() {
                out.insert(name.clone(), module.join("::"));
            }
        }
    }
    out
}

fn layer(module: &str) -> Option<usize> {
    let top = module.split("::").next()?;
    LAYERS.iter().position(|l| l.contains(&top))
}

fn is_handler(m: &Module) -> bool {
    m.code.contains("fn specs(")
}

/// Every import edge between modules (the root excluded on both ends).
fn edges(mods: &BTreeMap<String, Module>) -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, m) in mods {
        if name == "crate" || EXEMPT.contains(&name.as_str()) {
            continue;
        }
        let out = g.entry(name.clone()).or_default();
        for p in paths(name, &m.code) {
            let t = target(mods, &p);
            if t != *name && t != "crate" {
                out.insert(t);
            }
        }
    }
    g
}

#[test]
fn every_module_has_a_layer() {
    let mods = modules();
    let lost: Vec<_> = mods
        .keys()
        .filter(|m| *m != "crate" && !EXEMPT.contains(&m.as_str()) && layer(m).is_none())
        .collect();
    assert!(lost.is_empty(), "modules outside every layer: {lost:?}");
}

#[test]
fn no_import_points_up_a_layer() {
    let mods = modules();
    let mut up = Vec::new();
    for (from, to) in edges(&mods) {
        for t in to {
            if let (Some(a), Some(b)) = (layer(&from), layer(&t)) {
                if b > a {
                    up.push(format!("{from} -> {t}"));
                }
            }
        }
    }
    assert!(
        up.is_empty(),
        "imports pointing up a layer:\n{}",
        up.join("\n")
    );
}

#[test]
fn only_the_dispatcher_imports_handlers_and_handlers_export_only_their_specs() {
    let mods = modules();
    let mut wrong = Vec::new();
    for (from, to) in edges(&mods) {
        for t in to {
            if is_handler(&mods[&t]) && !from.starts_with("dispatch") {
                wrong.push(format!("{from} imports the handler module {t}"));
            }
        }
    }
    for (name, m) in &mods {
        if !is_handler(m) {
            continue;
        }
        for line in m.code.lines() {
            let l = line.trim_start();
            let public = l.starts_with("pub ") || l.starts_with("pub(");
            let allowed = l.starts_with("pub fn specs(") || l.starts_with("pub mod ");
            if public && !allowed {
                wrong.push(format!("{name} exports `{}`", l.trim_end()));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn modules_import_one_another_without_a_circle() {
    let g = edges(&modules());
    // Depth-first search for a back edge; report the circle it closes.
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        circles: &mut Vec<String>,
    ) {
        if done.contains(n) {
            return;
        }
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut c = stack[i..].to_vec();
            c.push(n.to_owned());
            circles.push(c.join(" -> "));
            return;
        }
        stack.push(n.to_owned());
        for t in g.get(n).into_iter().flatten() {
            visit(t, g, stack, done, circles);
        }
        stack.pop();
        done.insert(n.to_owned());
    }
    let mut done = BTreeSet::new();
    let mut circles = Vec::new();
    for n in g.keys() {
        visit(n, &g, &mut Vec::new(), &mut done, &mut circles);
    }
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

#[test]
fn records_are_encoded_only_by_typed_record_access() {
    let mods = modules();
    let raw: Vec<_> = mods
        .iter()
        .filter(|(name, _)| name.as_str() != "infra::records")
        .filter(|(_, m)| {
            ["encode_record", "decode_record"]
                .iter()
                .any(|f| m.code.contains(f))
        })
        .map(|(name, _)| name.clone())
        .collect();
    assert!(
        raw.is_empty(),
        "records encoded outside infra::records (use the domain's Records): {raw:?}"
    );
}

/// Every `Table::X` named in `code`.
fn tables_named(code: &str) -> BTreeSet<String> {
    code.match_indices("Table::")
        .map(|(i, m)| {
            code[i + m.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect::<String>()
        })
        .filter(|t| !t.is_empty())
        .collect()
}

#[test]
fn a_table_is_named_only_inside_its_owners_domain() {
    let mods = modules();
    // The owners, read from their `fn tables`: table -> the folder of the owning module.
    let mut domain_of = BTreeMap::new();
    for (name, m) in &mods {
        let Some(i) = m.code.find("fn tables(&self)") else {
            continue;
        };
        let body = &m.code[i..];
        let body = &body[..body.find('}').unwrap_or(body.len())];
        let mut folder: Vec<&str> = name.split("::").collect();
        if !m.dir {
            folder.pop();
        }
        for t in tables_named(body) {
            domain_of.insert(t, folder.join("::"));
        }
    }
    assert!(domain_of.len() >= 21, "owners found: {domain_of:?}");
    let mut wrong = Vec::new();
    for (name, m) in &mods {
        if EXEMPT.contains(&name.as_str()) {
            continue;
        }
        for t in tables_named(&m.code) {
            // `Meta` is a keyed space every domain keeps its own keys in.
            if t == "Meta" {
                continue;
            }
            let Some(domain) = domain_of.get(&t) else {
                wrong.push(format!("{name} names Table::{t}, which no owner claims"));
                continue;
            };
            let inside = name == domain || name.starts_with(&format!("{domain}::"));
            if !inside {
                wrong.push(format!("{name} names Table::{t} of {domain}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The checks above are only as good as the path reader: it must see grouped, nested,
/// relative and inline paths.
#[test]
fn the_path_reader_sees_every_form_of_import() {
    let code = "use crate::{a::b, c::{d, e::F}};\nuse super::g;\nfn x() { crate::h::i(); }";
    let got: BTreeSet<String> = paths("factors::totp::commands", code)
        .into_iter()
        .map(|p| p.join("::"))
        .collect();
    let want: BTreeSet<String> = ["a::b", "c::d", "c::e::F", "factors::totp::g", "h::i"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(got, want);
    let got: Vec<String> = paths("factors::totp", "use super::passkey::X;")
        .into_iter()
        .map(|p| p.join("::"))
        .collect();
    assert_eq!(got, ["factors::passkey::X"]);
    // A re-exported name lands in its defining module.
    let mods = modules();
    let t = target(&mods, &["Dispatcher".to_owned()]);
    assert_eq!(t, "dispatch::dispatcher");
    assert_eq!(target(&mods, &["Ctx".to_owned()]), "crate");
}

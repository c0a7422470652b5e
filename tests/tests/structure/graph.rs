//! Reads a crate's sources with `syn`: its files, their lines and
//! functions, and the import arrows between its modules.
//!
//! An arrow is a private `use`, or a `crate::`/`super::`/`self::` path in
//! code, from the file that holds it to the file of the module it names. A
//! `pub use` is a folder's table of contents, not an arrow; it is followed
//! when a path goes through it (`crate::ControllerError` names `error`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// One source file.
pub struct SourceFile {
    pub path: PathBuf,
    /// Its module path in the library (`link::mqtt`; "" for lib.rs); empty for files outside it.
    pub module: String,
    pub lines: usize,
    /// (name, first line, lines) of every function with a body.
    pub functions: Vec<(String, usize, usize)>,
    /// Absolute paths this file's module code names, with the line.
    uses: Vec<(Vec<String>, usize)>,
    /// Re-exports: a name of this module and the absolute path it stands for.
    reexports: BTreeMap<String, Vec<String>>,
}

/// A crate's files and its library's module tree.
pub struct Crate {
    pub name: String,
    pub files: Vec<SourceFile>,
}

/// The controller's layers, top first.
pub struct Layers(BTreeMap<String, usize>);

impl Layers {
    pub fn new(table: &[&[&str]]) -> Self {
        Self(table.iter().enumerate().flat_map(|(i, row)| row.iter().map(move |c| ((*c).to_owned(), i))).collect())
    }

    pub fn of(&self, component: &str) -> Option<usize> {
        self.0.get(component).copied()
    }
}

/// The component a module belongs to: its first segment ("lib" for the root).
pub fn component(module: &str) -> String {
    module.split("::").next().filter(|s| !s.is_empty()).unwrap_or("lib").to_owned()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

impl Crate {
    /// Reads every `.rs` file under `dirs` of the crate at `root`; the
    /// library's module tree is followed from `src/lib.rs`.
    pub fn load(root: &Path, dirs: &[&str]) -> Self {
        let mut paths = Vec::new();
        for d in dirs {
            rust_files(&root.join(d), &mut paths);
        }
        paths.sort();
        let modules = library_modules(&root.join("src"));
        let files = paths
            .into_iter()
            .map(|p| {
                let module = modules.get(&p).cloned();
                read(&p, module.as_deref())
            })
            .collect();
        let name = root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Self { name, files }
    }

    fn library(&self) -> impl Iterator<Item = &SourceFile> {
        self.files.iter().filter(|f| !f.module.is_empty() || f.path.ends_with("src/lib.rs"))
    }

    /// The module file a path names: the longest prefix that is a file,
    /// through re-exports.
    fn resolve(&self, path: &[String], depth: usize) -> Option<String> {
        let mods: BTreeMap<&str, &SourceFile> = self.library().map(|f| (f.module.as_str(), f)).collect();
        let mut best = None;
        for n in (0..=path.len()).rev() {
            let m = path[..n].join("::");
            if let Some(f) = mods.get(m.as_str()) {
                best = Some((m, n, *f));
                break;
            }
        }
        let (m, n, f) = best?;
        if depth < 8
            && let Some(next) = path.get(n)
            && let Some(target) = f.reexports.get(next)
        {
            let mut p = target.clone();
            p.extend_from_slice(&path[n + 1..]);
            return self.resolve(&p, depth + 1).or(Some(m));
        }
        Some(m)
    }

    /// Every arrow (from module, to module, line), without self-arrows.
    pub fn edges(&self) -> Vec<(String, String, usize)> {
        let mut out = BTreeSet::new();
        for f in self.library() {
            for (path, line) in &f.uses {
                if let Some(to) = self.resolve(path, 0)
                    && to != f.module
                {
                    out.insert((f.module.clone(), to, *line));
                }
            }
        }
        let mut seen = BTreeSet::new();
        out.into_iter().filter(|(a, b, _)| seen.insert((a.clone(), b.clone()))).collect()
    }

    /// A circle between components, or between the files of one component.
    pub fn find_cycle(&self) -> Option<Vec<String>> {
        let edges = self.edges();
        let comp: BTreeSet<(String, String)> = edges
            .iter()
            .map(|(a, b, _)| (component(a), component(b)))
            .filter(|(a, b)| a != b && a != "lib" && b != "lib")
            .collect();
        if let Some(c) = cycle(&comp) {
            return Some(c);
        }
        let within: BTreeSet<(String, String)> = edges
            .into_iter()
            .filter(|(a, b, _)| component(a) == component(b))
            .map(|(a, b, _)| (if a.is_empty() { "lib".into() } else { a }, b))
            .collect();
        cycle(&within)
    }
}

/// A circle in a directed graph, if there is one (depth-first search).
fn cycle(edges: &BTreeSet<(String, String)>) -> Option<Vec<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges {
        next.entry(a).or_default().push(b);
    }
    fn walk<'a>(
        n: &'a str,
        next: &BTreeMap<&'a str, Vec<&'a str>>,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        state.insert(n, 1);
        stack.push(n);
        for &m in next.get(n).into_iter().flatten() {
            match state.get(m) {
                Some(1) => {
                    let at = stack.iter().position(|s| *s == m).unwrap_or(0);
                    let mut c: Vec<String> = stack[at..].iter().map(|s| (*s).to_owned()).collect();
                    c.push(m.to_owned());
                    return Some(c);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = walk(m, next, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(n, 2);
        None
    }
    let mut state = BTreeMap::new();
    let starts: Vec<&str> = next.keys().copied().collect();
    for n in starts {
        if !state.contains_key(n)
            && let Some(c) = walk(n, &next, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

/// File path -> module path of the library rooted at `src/lib.rs`.
fn library_modules(src: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let lib = src.join("lib.rs");
    if lib.exists() {
        walk_modules(&lib, src, "", &mut out);
    }
    out
}

fn walk_modules(file: &Path, dir: &Path, module: &str, out: &mut BTreeMap<PathBuf, String>) {
    out.insert(file.to_path_buf(), module.to_owned());
    let Ok(text) = std::fs::read_to_string(file) else { return };
    let Ok(ast) = syn::parse_file(&text) else { return };
    for item in ast.items {
        if let syn::Item::Mod(m) = item
            && m.content.is_none()
        {
            let name = m.ident.to_string();
            let child = if module.is_empty() { name.clone() } else { format!("{module}::{name}") };
            let flat = dir.join(format!("{name}.rs"));
            let (path, sub) =
                if flat.exists() { (flat, dir.join(&name)) } else { (dir.join(&name).join("mod.rs"), dir.join(&name)) };
            walk_modules(&path, &sub, &child, out);
        }
    }
}

/// Reads one file: lines, functions and (for library files) what it names.
fn read(path: &Path, module: Option<&str>) -> SourceFile {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
    let base: Vec<String> =
        module.filter(|m| !m.is_empty()).map(|m| m.split("::").map(String::from).collect()).unwrap_or_default();
    let mut v = Visitor {
        module: base,
        children: Vec::new(),
        functions: Vec::new(),
        uses: Vec::new(),
        reexports: BTreeMap::new(),
        depth: 0,
    };
    v.children.push(child_mods(&ast.items));
    v.visit_file(&ast);
    SourceFile {
        path: path.to_path_buf(),
        module: module.unwrap_or_default().to_owned(),
        lines: text.lines().count(),
        functions: v.functions,
        uses: if module.is_some() { v.uses } else { Vec::new() },
        reexports: v.reexports,
    }
}

fn child_mods(items: &[syn::Item]) -> Vec<String> {
    items
        .iter()
        .filter_map(|i| match i {
            syn::Item::Mod(m) => Some(m.ident.to_string()),
            _ => None,
        })
        .collect()
}

struct Visitor {
    /// The module being visited (inline modules pushed).
    module: Vec<String>,
    /// Child modules declared in each module of the stack.
    children: Vec<Vec<String>>,
    functions: Vec<(String, usize, usize)>,
    uses: Vec<(Vec<String>, usize)>,
    reexports: BTreeMap<String, Vec<String>>,
    /// Inline modules entered (re-exports count only at the file's top).
    depth: usize,
}

impl Visitor {
    /// The absolute path of `segments` as written in the current module;
    /// `None` for paths outside the crate (std, other crates, locals).
    fn absolute(&self, segments: &[String]) -> Option<Vec<String>> {
        let first = segments.first()?;
        let mut at = self.module.clone();
        let mut rest = segments;
        match first.as_str() {
            "crate" => {
                at.clear();
                rest = &segments[1..];
            }
            "self" => rest = &segments[1..],
            "super" => {
                while rest.first().is_some_and(|s| s == "super") {
                    at.pop();
                    rest = &rest[1..];
                }
            }
            name if self.children.last().is_some_and(|c| c.iter().any(|m| m == name)) => {}
            _ => return None,
        }
        at.extend(rest.iter().cloned());
        Some(at)
    }

    fn function(&mut self, name: &syn::Ident, from: proc_macro2::Span, to: proc_macro2::Span) {
        let (a, b) = (from.start().line, to.end().line);
        self.functions.push((name.to_string(), a, b.saturating_sub(a) + 1));
    }
}

fn flatten(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<(Vec<String>, String)>) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            flatten(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => {
            let name = n.ident.to_string();
            let mut full = prefix.clone();
            if name != "self" {
                full.push(name.clone());
            }
            out.push((full, name));
        }
        syn::UseTree::Rename(r) => {
            let mut full = prefix.clone();
            full.push(r.ident.to_string());
            out.push((full, r.rename.to_string()));
        }
        syn::UseTree::Glob(_) => out.push((prefix.clone(), "*".into())),
        syn::UseTree::Group(g) => {
            for t in &g.items {
                flatten(t, prefix, out);
            }
        }
    }
}

impl<'ast> Visit<'ast> for Visitor {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if let Some((_, items)) = &m.content {
            self.module.push(m.ident.to_string());
            self.children.push(child_mods(items));
            self.depth += 1;
            syn::visit::visit_item_mod(self, m);
            self.depth -= 1;
            self.children.pop();
            self.module.pop();
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        let line = u.use_token.span.start().line;
        let mut flat = Vec::new();
        flatten(&u.tree, &mut Vec::new(), &mut flat);
        let public = !matches!(u.vis, syn::Visibility::Inherited);
        for (path, name) in flat {
            let Some(abs) = self.absolute(&path) else { continue };
            if public && self.depth == 0 {
                self.reexports.insert(name, abs);
            } else {
                self.uses.push((abs, line));
            }
        }
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segments: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        if segments.len() > 1
            && matches!(segments[0].as_str(), "crate" | "super" | "self")
            && let Some(abs) = self.absolute(&segments)
        {
            let line = p.segments.first().map_or(0, |s| s.ident.span().start().line);
            self.uses.push((abs, line));
        }
        syn::visit::visit_path(self, p);
    }

    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        self.function(&f.sig.ident, f.sig.fn_token.span, f.block.brace_token.span.close());
        syn::visit::visit_item_fn(self, f);
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        self.function(&f.sig.ident, f.sig.fn_token.span, f.block.brace_token.span.close());
        syn::visit::visit_impl_item_fn(self, f);
    }

    fn visit_trait_item_fn(&mut self, f: &'ast syn::TraitItemFn) {
        if let Some(b) = &f.default {
            self.function(&f.sig.ident, f.sig.fn_token.span, b.brace_token.span.close());
        }
        syn::visit::visit_trait_item_fn(self, f);
    }
}

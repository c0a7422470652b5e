//! The house rules of docs/architecture.md, checked on the sources as they
//! are: no import circle between the files of any crate, nothing inside the
//! controller importing a layer above its own, no source file over about 500
//! lines and no function over about 80. A rule broken names the file, the
//! line and the way out.

#[path = "structure/graph.rs"]
mod graph;

use std::path::{Path, PathBuf};

use graph::{Crate, Layers};

/// Lines a source file may have ("about 500").
const MAX_FILE_LINES: usize = 550;
/// Lines a function may have ("about 80").
const MAX_FN_LINES: usize = 85;

/// The controller's components, top (may import anything below) to bottom.
const CONTROLLER_LAYERS: &[&[&str]] = &[
    &["lib", "controller", "config", "inbound", "fleetctl", "backup", "bin"],
    &["api", "http", "dashboard"],
    &["rollouts"],
    &["desired", "jobs", "ingest", "security"],
    &["link"],
    &["router", "registry", "usage"],
    &["store", "artifacts"],
    &["metrics", "auth", "clock", "error"],
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Every crate of the workspace with the folders of its sources.
fn crates() -> Vec<Crate> {
    let root = workspace();
    let lib = |name: &str, dirs: &[&str]| Crate::load(&root.join(name), dirs);
    vec![
        lib("proto", &["src"]),
        lib("durable", &["src"]),
        lib("net", &["src"]),
        lib("hardware", &["src", "tests"]),
        lib("inference", &["src", "tests", "benches"]),
        lib("agent", &["src", "tests", "benches"]),
        lib("controller", &["src", "tests", "benches"]),
        lib("local", &["src"]),
        lib("tests", &["src", "tests", "benches"]),
        lib("fuzz", &["src", "tests"]),
    ]
}

#[test]
fn no_file_is_over_about_500_lines() {
    let mut long = Vec::new();
    for c in crates() {
        for f in &c.files {
            if f.lines > MAX_FILE_LINES {
                long.push(format!("{} ({} lines)", f.path.display(), f.lines));
            }
        }
    }
    assert!(long.is_empty(), "split these files by concern (STYLE.md): {long:#?}");
}

#[test]
fn no_function_is_over_about_80_lines() {
    let mut long = Vec::new();
    for c in crates() {
        for f in &c.files {
            for (name, line, n) in &f.functions {
                if *n > MAX_FN_LINES {
                    long.push(format!("{}:{line} fn {name} ({n} lines)", f.path.display()));
                }
            }
        }
    }
    assert!(long.is_empty(), "split these functions into named steps: {long:#?}");
}

#[test]
fn no_crate_has_an_import_circle() {
    let mut circles = Vec::new();
    for c in crates() {
        if let Some(cycle) = c.find_cycle() {
            circles.push(format!("{}: {}", c.name, cycle.join(" -> ")));
        }
    }
    assert!(circles.is_empty(), "break these circles (move the shared item down): {circles:#?}");
}

#[test]
fn nothing_in_the_controller_imports_a_layer_above_its_own() {
    let c = crates().into_iter().find(|c| c.name == "controller").expect("the controller crate");
    let layers = Layers::new(CONTROLLER_LAYERS);
    let mut upward = Vec::new();
    for (from, to, line) in c.edges() {
        let (a, b) = (graph::component(&from), graph::component(&to));
        match (layers.of(&a), layers.of(&b)) {
            (Some(la), Some(lb)) if lb < la => {
                upward.push(format!("{from}:{line} imports {to} (layer {lb} above {la})"))
            }
            (None, _) => upward.push(format!("{from}: component {a} has no layer in CONTROLLER_LAYERS")),
            (_, None) => upward.push(format!("{to}: component {b} has no layer in CONTROLLER_LAYERS")),
            _ => {}
        }
    }
    upward.sort();
    upward.dedup();
    assert!(upward.is_empty(), "imports that point up (docs/architecture.md): {upward:#?}");
}

#[test]
fn the_checker_sees_circles_and_long_functions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("a")).expect("mkdir");
    std::fs::write(src.join("lib.rs"), "pub mod a;\npub mod b;\n").expect("write");
    std::fs::write(src.join("a/mod.rs"), "pub mod c;\npub use c::C;\npub struct A;\n").expect("write");
    std::fs::write(src.join("a/c.rs"), "use crate::b::B;\npub struct C(B);\n").expect("write");
    let body = "    let x = 1;\n".repeat(100);
    std::fs::write(src.join("b.rs"), format!("use crate::a::A;\npub struct B(A);\nfn long() {{\n{body}}}\n"))
        .expect("write");
    let c = Crate::load(dir.path(), &["src"]);
    let cycle = c.find_cycle().expect("a -> b -> a is a circle");
    assert!(cycle.iter().any(|m| m == "b") && cycle.iter().any(|m| m == "a"), "{cycle:?}");
    let b = c.files.iter().find(|f| f.module == "b").expect("b.rs");
    assert!(b.functions.iter().any(|(n, _, len)| n == "long" && *len > MAX_FN_LINES), "{:?}", b.functions);
    // The facade's re-export is not an import: a/mod.rs -> a/c.rs does not count.
    assert!(!c.edges().iter().any(|(f, t, _)| f == "a" && t == "a::c"), "{:?}", c.edges());
}

//! The floor plan, checked: every module of the library imports only modules below it in
//! `LAYERS` (top first), the engine and the filesystem reach the network only through the
//! `store` seam, only `fs::fuse` (and nothing above it but the wiring) speaks `fuser`, and the
//! emulator shares nothing with the client but signing and formatting helpers. A new
//! back-edge (a cycle) fails this test with the file and line that made it.

use std::path::{Path, PathBuf};

/// Top first. A module may import any module after it, none before it.
const LAYERS: &[&str] = &[
    "mount", "control", "metrics", "status", "prefetch", "fs::fuse", "fs", "cache", "hydrate",
    "emulator", "oss", "store", "crc64", "sample", "size", "net",
];

/// Modules that must reach object storage only through `store` (its trait, types, errors).
const BEHIND_THE_STORE_SEAM: &[&str] = &["prefetch", "fs::fuse", "fs", "cache", "hydrate"];

/// What the emulator may take from the client's module: the signer and formatting helpers.
const EMULATOR_MAY_USE_FROM_OSS: &[&str] = &["sign", "time", "xml"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The layer a source file belongs to (`src/fs/fuse.rs` → `fs::fuse`), `None` for the binary.
fn layer_of(rel: &Path) -> Option<String> {
    let parts: Vec<String> = rel
        .components()
        .map(|c| {
            c.as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string()
        })
        .collect();
    match parts.as_slice() {
        [f] if f == "main" || f == "lib" => None,
        [d, ..] if d == "cli" => None,
        [d, f, ..] if d == "fs" && f == "fuse" => Some("fs::fuse".into()),
        [d, ..] => Some(d.clone()),
        [] => None,
    }
}

/// The layer a `crate::a::b` path names.
fn layer_named(path: &str) -> String {
    let mut it = path.split("::");
    let first = it.next().unwrap_or("");
    let second = it.next().unwrap_or("");
    if first == "fs" && second == "fuse" {
        "fs::fuse".into()
    } else {
        first.to_string()
    }
}

/// Every `crate::...` path in the code (comments excluded), with its line number.
fn crate_paths(text: &str) -> Vec<(usize, String, String)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let tail = &rest[i + "crate::".len()..];
            let path: String = tail
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let path = path.trim_end_matches(':').to_string();
            // `use crate::fs::{a, fuse}` style groups: the group's first segment is the layer.
            found.push((n + 1, path.clone(), line.trim().to_string()));
            rest = &tail[path.len()..];
        }
    }
    found
}

#[test]
fn every_module_imports_only_modules_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let rank = |l: &str| LAYERS.iter().position(|x| *x == l);
    let mut problems = Vec::new();
    let mut checked = 0;
    for file in files {
        let rel = file.strip_prefix(&src).unwrap().to_path_buf();
        let Some(me) = layer_of(&rel) else { continue };
        let my_rank = rank(&me).unwrap_or_else(|| {
            panic!(
                "{} belongs to layer {me:?}, which LAYERS does not list",
                rel.display()
            )
        });
        let text = std::fs::read_to_string(&file).unwrap();
        // `fs` files other than fuse.rs must not reach into the adapter through `super::fuse`.
        if me == "fs" && rel != Path::new("fs/mod.rs") && text.contains("super::fuse") {
            problems.push(format!("{}: fs imports fs::fuse (above it)", rel.display()));
        }
        for (line, path, code) in crate_paths(&text) {
            checked += 1;
            let target = layer_named(&path);
            if target == me || (me == "fs::fuse" && target == "fs") {
                continue;
            }
            let Some(r) = rank(&target) else {
                problems.push(format!(
                    "{}:{line}: unknown layer {target:?}: {code}",
                    rel.display()
                ));
                continue;
            };
            if r <= my_rank {
                problems.push(format!(
                    "{}:{line}: {me} imports {target}, which is above it: {code}",
                    rel.display()
                ));
            }
            if target == "oss" && BEHIND_THE_STORE_SEAM.contains(&me.as_str()) {
                problems.push(format!(
                    "{}:{line}: {me} names the OSS client; it must speak `store` only: {code}",
                    rel.display()
                ));
            }
            if me == "emulator" && target == "oss" {
                let sub = path.split("::").nth(1).unwrap_or("");
                if !EMULATOR_MAY_USE_FROM_OSS.contains(&sub) {
                    problems.push(format!(
                        "{}:{line}: the emulator uses oss::{sub}; it may share only {EMULATOR_MAY_USE_FROM_OSS:?} with the client: {code}",
                        rel.display()
                    ));
                }
            }
        }
        let speaks_fuser = text.lines().any(|l| {
            let code = l.split("//").next().unwrap_or("");
            code.contains("fuser::") || code.trim_start().starts_with("use fuser")
        });
        if speaks_fuser && me != "fs::fuse" {
            problems.push(format!("{}: only fs::fuse may speak fuser", rel.display()));
        }
    }
    assert!(
        checked > 50,
        "found only {checked} crate paths: is the scan broken?"
    );
    assert!(
        problems.is_empty(),
        "layering broken:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_scan_sees_a_back_edge() {
    // A guard for the guard: a hydrate file importing fs must be reported.
    let paths =
        crate_paths("use crate::fs::OssFs; // not crate::cache\nlet x = crate::fs::fuse::X;");
    let layers: Vec<String> = paths.iter().map(|(_, p, _)| layer_named(p)).collect();
    assert_eq!(layers, vec!["fs", "fs::fuse"]);
    assert_eq!(
        layer_of(Path::new("fs/fuse.rs")).as_deref(),
        Some("fs::fuse")
    );
    assert_eq!(
        layer_of(Path::new("hydrate/worker.rs")).as_deref(),
        Some("hydrate")
    );
    assert_eq!(layer_of(Path::new("cli/mount.rs")), None);
}

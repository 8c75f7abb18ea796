//! The floor plan, checked: every module of the library imports only modules below it in
//! `LAYERS` (top first), the engine and the filesystem reach the network only through the
//! `store` seam, and only `fs::fuse` (and nothing above it but the wiring) speaks `fuser`.
//! The emulator stands apart from the floor plan: no module of the library imports it (so a
//! client, engine or filesystem bug cannot lean on the test server), and it imports only the
//! signing and formatting helpers it shares with the client and the leaf helpers in
//! `EMULATOR_MAY_USE`. A new back-edge (a cycle) or a crossing fails this test with the file
//! and line that made it.

use std::path::{Path, PathBuf};

/// Top first. A module may import any module after it, none before it.
const LAYERS: &[&str] = &[
    "csi", "node", "mount", "control", "metrics", "status", "prefetch", "fs::fuse", "fs", "cache",
    "hydrate", "oss", "store", "crc64", "sample", "memory", "size", "net",
];

/// Modules that must reach object storage only through `store` (its trait, types, errors).
/// `mount`, `metrics` and `status` too: the CLI picks and builds the client (OSS or S3).
const BEHIND_THE_STORE_SEAM: &[&str] = &[
    "mount", "metrics", "status", "prefetch", "fs::fuse", "fs", "cache", "hydrate",
];

/// Modules that reach the engine only through `cache` (its `OpenEntry`): of `hydrate` they
/// may name only these plain types, never drive a hydration themselves.
const THROUGH_THE_CACHE: &[&str] = &["prefetch", "fs::fuse", "fs"];
const ENGINE_TYPES_ABOVE_THE_CACHE: &[&str] = &[
    "ObjectIdentity",
    "HydrateError",
    "Progress",
    "FetchMode",
    // Direct reads take their connections from the engine's one limiter.
    "ConnectionLimiter",
    "limiter::ConnectionPermit",
    // Bytes asked for with the identity at open, handed to the entry (not a fetch of its own).
    "Prefetched",
];

/// The names a line imports or uses from `crate::hydrate` (`{A, B}` groups opened).
fn hydrate_names(code: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::hydrate") {
        let tail = &rest[i + "crate::hydrate".len()..];
        rest = tail;
        let Some(tail) = tail.strip_prefix("::") else {
            names.push(String::new()); // the module itself
            continue;
        };
        if let Some(group) = tail.strip_prefix('{') {
            let group = group.split('}').next().unwrap_or("");
            names.extend(
                group
                    .split(',')
                    .map(|n| n.trim().to_string())
                    .filter(|n| !n.is_empty()),
            );
        } else {
            names.push(
                tail.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                    .collect::<String>()
                    .trim_end_matches(':')
                    .to_string(),
            );
        }
    }
    names
}

/// The test server, kept out of `LAYERS`: nothing there may import it.
const EMULATOR: &str = "emulator";

/// Everything the emulator may import (a path and what is inside it): the client's signer
/// and formatting helpers, and leaf helpers that know nothing of the client.
const EMULATOR_MAY_USE: &[&str] = &["oss::sign", "oss::time", "oss::xml", "crc64", "net"];

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

/// Whether the emulator may import `path` (`oss::sign::X` is inside `oss::sign`).
fn emulator_may_use(path: &str) -> bool {
    EMULATOR_MAY_USE
        .iter()
        .any(|allowed| path == *allowed || path.starts_with(&format!("{allowed}::")))
}

/// What is wrong with the imports of the source file `rel` (relative to `src/`) holding
/// `text`, one line per problem, each naming the file and line; and how many crate paths it
/// checked.
fn problems_in(rel: &Path, text: &str) -> (Vec<String>, usize) {
    let rank = |l: &str| LAYERS.iter().position(|x| *x == l);
    let mut problems = Vec::new();
    let Some(me) = layer_of(rel) else {
        return (problems, 0);
    };
    let my_rank = (me != EMULATOR).then(|| {
        rank(&me).unwrap_or_else(|| {
            panic!(
                "{} belongs to layer {me:?}, which LAYERS does not list",
                rel.display()
            )
        })
    });
    // `fs` files other than fuse.rs must not reach into the adapter through `super::fuse`.
    if me == "fs" && rel != Path::new("fs/mod.rs") && text.contains("super::fuse") {
        problems.push(format!("{}: fs imports fs::fuse (above it)", rel.display()));
    }
    let paths = crate_paths(text);
    for (line, path, code) in &paths {
        let target = layer_named(path);
        let at = format!("{}:{line}", rel.display());
        let Some(my_rank) = my_rank else {
            if !emulator_may_use(path) {
                problems.push(format!(
                    "{at}: the emulator imports crate::{path}; it may import only {EMULATOR_MAY_USE:?}: {code}"
                ));
            }
            continue;
        };
        if target == EMULATOR {
            problems.push(format!(
                "{at}: {me} imports the emulator, which stands apart from the library: {code}"
            ));
            continue;
        }
        if target == me || (me == "fs::fuse" && target == "fs") {
            continue;
        }
        let Some(r) = rank(&target) else {
            problems.push(format!("{at}: unknown layer {target:?}: {code}"));
            continue;
        };
        if r <= my_rank {
            problems.push(format!(
                "{at}: {me} imports {target}, which is above it: {code}"
            ));
        }
        if target == "oss" && BEHIND_THE_STORE_SEAM.contains(&me.as_str()) {
            problems.push(format!(
                "{at}: {me} names the OSS client; it must speak `store` only: {code}"
            ));
        }
    }
    if THROUGH_THE_CACHE.contains(&me.as_str()) {
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for name in hydrate_names(code) {
                if !ENGINE_TYPES_ABOVE_THE_CACHE.contains(&name.as_str()) {
                    problems.push(format!(
                        "{}:{}: {me} reaches past the cache into the engine (crate::hydrate::{name}); use cache::OpenEntry: {}",
                        rel.display(),
                        n + 1,
                        line.trim()
                    ));
                }
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
    (problems, paths.len())
}

#[test]
fn every_module_imports_only_modules_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut problems = Vec::new();
    let mut checked = 0;
    for file in files {
        let rel = file.strip_prefix(&src).unwrap().to_path_buf();
        let text = std::fs::read_to_string(&file).unwrap();
        let (found, paths) = problems_in(&rel, &text);
        problems.extend(found);
        checked += paths;
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
fn the_emulator_stays_apart() {
    // A guard for the guard: the engine, the cache or the filesystem importing the emulator
    // is reported with its file and line, wherever the emulator would rank.
    for rel in [
        "hydrate/worker.rs",
        "cache/mod.rs",
        "fs/mod.rs",
        "mount.rs",
        "net.rs",
    ] {
        let (problems, _) = problems_in(
            Path::new(rel),
            "use std::sync::Arc;\nuse crate::emulator::{Emulator, EmulatorConfig};\n",
        );
        assert_eq!(problems.len(), 1, "{rel}: {problems:?}");
        assert!(
            problems[0].starts_with(&format!("{rel}:2: ")) && problems[0].contains("emulator"),
            "{problems:?}"
        );
    }
    // The emulator takes the signer and formatting helpers, and nothing else of the client
    // or the engine.
    let emulator = Path::new("emulator/router.rs");
    let allowed = "use crate::oss::sign;\nuse crate::oss::sign::ParsedAuthorization;\n\
                   use crate::oss::xml::escape;\nlet d = crate::crc64::Digest::default();\n";
    assert_eq!(problems_in(emulator, allowed).0, Vec::<String>::new());
    for refused in [
        "use crate::oss::client::OssClient;",
        "use crate::oss::OssClient;",
        "use crate::store::ObjectStore;",
        "use crate::hydrate::Hydration;",
        "use crate::oss::signature_of_mine;",
    ] {
        let (problems, _) = problems_in(emulator, refused);
        assert_eq!(problems.len(), 1, "{refused}: {problems:?}");
        assert!(
            problems[0].starts_with("emulator/router.rs:1: "),
            "{problems:?}"
        );
    }
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
    assert_eq!(
        layer_of(Path::new("emulator/router.rs")).as_deref(),
        Some(EMULATOR)
    );
}

#[test]
fn the_filesystem_reaches_the_engine_only_through_the_cache() {
    // A guard for the guard: driving a hydration from above the cache is reported, in a
    // group or on its own; the plain types stay allowed.
    let fs = Path::new("fs/handles.rs");
    let allowed = "use crate::hydrate::{HydrateError, ObjectIdentity};\n\
                   use crate::hydrate::limiter::ConnectionPermit;\n";
    assert_eq!(problems_in(fs, allowed).0, Vec::<String>::new());
    for refused in [
        "use crate::hydrate::{HydrateError, Hydration, ObjectIdentity};",
        "let h: crate::hydrate::Hydration = todo!();",
        "use crate::hydrate::scheduler;",
        "use crate::hydrate;",
    ] {
        let (problems, _) = problems_in(fs, refused);
        assert_eq!(problems.len(), 1, "{refused}: {problems:?}");
        assert!(
            problems[0].starts_with("fs/handles.rs:1: ") && problems[0].contains("OpenEntry"),
            "{problems:?}"
        );
    }
    let prefetch = Path::new("prefetch.rs");
    assert_eq!(
        problems_in(prefetch, "use crate::hydrate::Hydration;")
            .0
            .len(),
        1
    );
}

//! The layout of ../shared/LAYOUT.md as a test: every file in `src/` lives in one room, and the
//! `crate::…` paths it uses never run where the rules forbid — the three sides (`cli`,
//! `appliance`, `peel`) never import each other, and the pure core (`wire`, `identity`,
//! `permissions`, `secrets`, `authority`, `pki`) imports no side, nor `home`, nor `net`.
//! A failure names the file, the line and the import.

use std::path::{Path, PathBuf};

/// The sides: what runs in the admin's terminal, inside `zester up`, on a peel.
const SIDES: [&str; 3] = ["cli", "appliance", "peel"];
/// The pure core: no side, no home, no network.
const PURE: [&str; 6] = [
    "wire",
    "identity",
    "permissions",
    "secrets",
    "authority",
    "pki",
];
/// The edges every side may use.
const EDGES: [&str; 2] = ["home", "net"];

/// The room of a file: its first path segment under `src/` (`src/appliance/up.rs` →
/// `appliance`, `src/pki.rs` → `pki`); `None` for the crate roots.
fn room(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_string_lossy();
    let first = first.trim_end_matches(".rs").to_string();
    (first != "lib" && first != "main").then_some(first)
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|x| x == "rs") {
            found.push(path);
        }
    }
}

/// The rooms a line names through `crate::<room>`, outside comments and strings' prose.
fn imported_rooms(line: &str) -> Vec<String> {
    let code = line.split("//").next().unwrap_or_default();
    let mut rooms = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            rooms.push(name);
        }
        rest = after;
    }
    // `use crate::{a, b::c}` names several rooms at once.
    if let Some(group) = code.split("crate::{").nth(1) {
        for part in group.split(',') {
            let name: String = part
                .trim()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && !rooms.contains(&name) {
                rooms.push(name);
            }
        }
    }
    rooms
}

/// Why `from` may not import `to`, if it may not.
fn forbidden(from: &str, to: &str) -> Option<&'static str> {
    if from == to {
        return None;
    }
    let side = |r: &str| SIDES.contains(&r);
    if side(from) && side(to) {
        return Some("a side imports another side");
    }
    if PURE.contains(&from) && side(to) {
        return Some("a pure module imports a side");
    }
    if PURE.contains(&from) && EDGES.contains(&to) {
        return Some("a pure module imports the home or the network");
    }
    None
}

#[test]
fn every_file_keeps_to_its_room() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let known: Vec<&str> = SIDES.iter().chain(&PURE).chain(&EDGES).copied().collect();
    let mut problems = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let Some(from) = room(relative) else { continue };
        if !known.contains(&from.as_str()) {
            problems.push(format!(
                "src/{}: not in a room of the layout (one of {})",
                relative.display(),
                known.join(", ")
            ));
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            for to in imported_rooms(line) {
                if let Some(why) = forbidden(&from, &to) {
                    problems.push(format!(
                        "src/{}:{}: {why}: {from} -> {to}: {}",
                        relative.display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} layering problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn the_rules_catch_what_they_should() {
    assert_eq!(imported_rooms("use crate::home::{self, Home};"), ["home"]);
    assert_eq!(
        imported_rooms("use crate::{wire::subjects, peel::Agent};"),
        ["wire", "peel"]
    );
    assert!(imported_rooms("// see crate::appliance").is_empty());
    assert!(forbidden("cli", "appliance").is_some());
    assert!(forbidden("peel", "cli").is_some());
    assert!(forbidden("wire", "home").is_some());
    assert!(forbidden("identity", "peel").is_some());
    assert!(forbidden("appliance", "wire").is_none());
    assert!(forbidden("cli", "home").is_none());
    assert!(forbidden("permissions", "wire").is_none());
}

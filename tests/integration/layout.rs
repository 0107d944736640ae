//! The layout table of docs/architecture.md, held against the code: each top-level module uses
//! only the modules its row allows, and the generic block layer knows no volume type.

use std::collections::BTreeSet;
use std::path::Path;

fn sources(dir: &Path) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                files.push((path.display().to_string(), text));
            }
        }
    }
    files
}

/// The top-level modules a module's files name as `crate::NAME`.
fn uses(module: &str) -> BTreeSet<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = sources(&src.join(module));
    let single = src.join(format!("{module}.rs"));
    if single.exists() {
        files.push((
            single.display().to_string(),
            std::fs::read_to_string(&single).unwrap(),
        ));
    }
    let mut found = BTreeSet::new();
    for (path, text) in files {
        for (at, _) in text.match_indices("crate::") {
            let name: String = text[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name != module {
                found.insert((name, path.clone()));
            }
        }
    }
    found
}

#[test]
fn each_module_uses_only_what_its_row_allows() {
    let rows: &[(&str, &[&str])] = &[
        ("protocol", &[]),
        ("fsutil", &[]),
        ("metrics", &["protocol"]),
        ("openstack", &["protocol"]),
        ("config", &["protocol", "metrics", "fsutil", "openstack"]),
        ("failpoints", &[]),
        ("backend", &["protocol", "fsutil", "failpoints"]),
        (
            "agent",
            &[
                "protocol",
                "backend",
                "config",
                "metrics",
                "notify",
                "fsutil",
                "failpoints",
            ],
        ),
        (
            "conductor",
            &[
                "protocol",
                "config",
                "metrics",
                "notify",
                "fsutil",
                "openstack",
            ],
        ),
        ("fuzzing", &["protocol", "backend", "agent", "conductor"]),
    ];
    for (module, allowed) in rows {
        for (name, path) in uses(module) {
            assert!(
                allowed.contains(&name.as_str()),
                "{path} uses crate::{name}, which the {module} row of \
                 docs/architecture.md does not allow"
            );
        }
    }
}

#[test]
fn the_block_layer_knows_no_volume_type() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/backend/block");
    for (path, text) in sources(&dir) {
        for backend in ["iscsi::", "rbd::", "simulated::"] {
            let outside_tests = text.split("#[cfg(test)]").next().unwrap_or_default();
            assert!(
                !outside_tests.contains(backend),
                "{path} names {backend}: a device matcher belongs to its backend"
            );
        }
    }
}

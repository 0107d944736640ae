//! `/proc/self/mountinfo` as the agent reads it to find where a device is mounted: any text is
//! read without panicking, only lines of the wanted devices count, and a mount point the kernel
//! escaped (space, tab, newline and backslash as `\ooo`) reads back as the path it was.
//!
//! Input: a mountinfo text; its first line is also used as a mount point.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use tether::fuzzing::mount_points;

/// How the kernel writes a path into mountinfo (`seq_path` with " \t\n\\").
fn kernel_escape(path: &str) -> String {
    let mut out = String::new();
    for c in path.chars() {
        match c {
            ' ' | '\t' | '\n' | '\\' => out.push_str(&format!("\\{:03o}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Every device number the text names, and one it may not.
    let mut numbers: Vec<String> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(2))
        .map(str::to_string)
        .collect();
    numbers.push("8:0".into());
    let found = mount_points(&text, &numbers);
    let lines = text
        .lines()
        .filter(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            fields.len() >= 5 && numbers.contains(&fields[2].to_string())
        })
        .count();
    assert_eq!(found.len(), lines);
    assert!(mount_points(&text, &[]).is_empty());

    let path = text.lines().next().unwrap_or_default();
    let line = format!(
        "36 22 8:16 / {} rw,relatime shared:20 - ext4 /dev/sdb rw\n",
        kernel_escape(path)
    );
    assert_eq!(
        mount_points(&line, &["8:16".into()]),
        vec![PathBuf::from(path)],
        "{line:?}"
    );
});

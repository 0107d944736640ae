//! What the agent reads from open-iscsi and multipath-tools: `iscsiadm -m discovery` output, a
//! failed iscsiadm's exit code and messages, the node record file it rewrites with CHAP
//! settings, and `multipath -a` output.
//!
//! Input: one byte of exit code, then stdout, a NUL byte, and stderr (scripts/fuzz builds the
//! seeds so from tests/fixtures/iscsi). The record is the whole text after the exit code.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether::backend::ErrorKind;
use tether::fuzzing::{
    iscsi_record_with, iscsiadm_discovery, iscsiadm_failure, multipath_added_wwid,
};

/// What the agent sets in a record: CHAP settings, whose values are validated names and
/// printable secrets (`protocol::target`).
const SETTINGS: &[(&str, &str)] = &[
    ("node.session.auth.authmethod", "CHAP"),
    ("node.session.auth.username", "initiator-user"),
    ("node.session.auth.password", "s3cret-Pa55word"),
    ("node.session.scan", "manual"),
];

fn discovery(stdout: &str) {
    for (portal, iqn) in iscsiadm_discovery(stdout) {
        assert!(
            !portal.contains(' ') && !portal.contains('\n'),
            "{portal:?}"
        );
        assert!(!iqn.is_empty() && !iqn.contains('\n'), "{iqn:?}");
        assert_eq!(iqn.trim(), iqn);
        // What iscsiadm would print for this pair reads back as the pair.
        let line = format!("{portal},1 {iqn}\n");
        assert_eq!(iscsiadm_discovery(&line), vec![(portal, iqn)], "{line:?}");
    }
}

fn record(text: &str) {
    let out = iscsi_record_with(text, SETTINGS);
    // Every setting is on a line of its own, with its value, wherever it was.
    for (key, value) in SETTINGS {
        let lines: Vec<&str> = out
            .lines()
            .filter(|l| l.split_once('=').is_some_and(|(k, _)| k.trim() == *key))
            .collect();
        assert!(!lines.is_empty(), "{key} is missing from {out:?}");
        for line in lines {
            assert_eq!(line, format!("{key} = {value}"), "in {out:?}");
        }
    }
    // Lines that set nothing of ours are kept, in order.
    let ours = |l: &str| {
        l.split_once('=')
            .is_some_and(|(k, _)| SETTINGS.iter().any(|(key, _)| k.trim() == *key))
    };
    let kept: Vec<&str> = text.lines().filter(|l| !ours(l)).collect();
    let after: Vec<&str> = out.lines().filter(|l| !ours(l)).collect();
    assert_eq!(kept, after, "other lines changed");
    // Rewriting again changes nothing.
    assert_eq!(iscsi_record_with(&out, SETTINGS), out);
    // iscsiadm's end marker stays last.
    if text.lines().last() == Some("# END RECORD") {
        assert_eq!(out.lines().last(), Some("# END RECORD"), "{out:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&code, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let (stdout, stderr) = text.split_once('\0').unwrap_or((&text, ""));
    discovery(stdout);
    // open-iscsi ends a record's lines with \n alone.
    record(&text.replace('\r', ""));

    let code = i32::from(code);
    let error = iscsiadm_failure(code, stdout, stderr);
    assert!(ErrorKind::ALL.contains(&error.kind));
    assert!(
        error.message.contains(&format!("iscsiadm exit {code}")),
        "{}",
        error.message
    );

    if let Some(wwid) = multipath_added_wwid(stdout) {
        assert!(!wwid.contains('\n'));
        assert!(stdout.lines().any(|l| l == format!("wwid '{wwid}' added")));
    }
});

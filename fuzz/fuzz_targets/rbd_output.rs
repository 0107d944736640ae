//! What the agent reads from the rbd CLI: the device a successful `rbd device map` printed, and
//! a failed map's exit code and messages, turned into a stable kind.
//!
//! Input: one byte of exit code, then stdout, a NUL byte, and stderr (scripts/fuzz builds the
//! seeds so from tests/fixtures/rbd).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether::backend::ErrorKind;
use tether::fuzzing::{rbd_map_failure, rbd_mapped_device};
use tether::protocol::target::{Monitor, RbdSpec};

fn spec() -> RbdSpec {
    RbdSpec {
        pool: "fixpool".into(),
        namespace: Some("fixns".into()),
        image: "vol0".into(),
        monitors: vec![Monitor {
            host: "192.0.2.7".into(),
            port: 6789,
        }],
        cluster: "ceph".into(),
        user: "admin".into(),
        key: None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&code, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let (stdout, stderr) = text.split_once('\0').unwrap_or((&text, ""));

    match rbd_mapped_device(stdout) {
        Ok(id) => {
            let number = stdout.trim().strip_prefix("/dev/rbd").unwrap();
            assert_eq!(number.parse::<u32>(), Ok(id));
            assert_eq!(rbd_mapped_device(&format!("/dev/rbd{id}\n")), Ok(id));
        }
        Err(e) => assert_eq!(e.kind, ErrorKind::MapFailed),
    }

    let code = i32::from(code);
    let error = rbd_map_failure(code, stdout, stderr, &spec());
    let kinds = [
        ErrorKind::AuthFailed,
        ErrorKind::ImageNotFound,
        ErrorKind::ClusterUnreachable,
        ErrorKind::DeviceBusy,
        ErrorKind::MapFailed,
    ];
    assert!(kinds.contains(&error.kind), "{:?}", error.kind);
    let start = format!("mapping fixpool/fixns/vol0 failed (rbd exit {code}: ");
    assert!(error.message.starts_with(&start), "{}", error.message);
    // Without an errno printed in parentheses, the exit code alone decides.
    if !stdout.contains('(') && !stderr.contains('(') && code <= 1 {
        assert_eq!(error.kind, ErrorKind::MapFailed);
    }
});

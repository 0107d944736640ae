//! /proc/self/mountinfo: which mount points a device (by major:minor) is mounted on.

use std::path::PathBuf;

/// Mount points of the devices whose `major:minor` is in `numbers`.
pub(crate) fn mount_points(mountinfo: &str, numbers: &[String]) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let number = fields.nth(2)?;
            let mount_point = fields.nth(1)?;
            numbers
                .iter()
                .any(|n| n == number)
                .then(|| PathBuf::from(unescape(mount_point)))
        })
        .collect()
}

/// The kernel writes space, tab, newline and backslash in paths as `\ooo` octal escapes. What
/// is no byte (`\400` to `\777`) is no escape, and stays as it is.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && (b'0'..=b'3').contains(&bytes[i + 1])
            && bytes[i + 2..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
36 22 8:0 / /srv/data rw,relatime shared:20 - ext4 /dev/sda rw
37 22 8:17 / /mnt/with\\040space rw,relatime shared:21 - xfs /dev/sdb1 rw
38 22 8:0 / /mnt/again rw,relatime shared:22 - ext4 /dev/sda rw
";

    #[test]
    fn finds_every_mount_of_a_device_and_its_partitions() {
        assert_eq!(
            mount_points(SAMPLE, &["8:0".into()]),
            vec![PathBuf::from("/srv/data"), PathBuf::from("/mnt/again")]
        );
        assert_eq!(
            mount_points(SAMPLE, &["8:16".into(), "8:17".into()]),
            vec![PathBuf::from("/mnt/with space")]
        );
        assert!(mount_points(SAMPLE, &["8:32".into()]).is_empty());
    }

    /// Found by fuzzing (fuzz/seeds/mountinfo/octal-overflow): `\777` overflowed a byte.
    #[test]
    fn an_escape_beyond_a_byte_is_kept_as_written() {
        assert_eq!(
            unescape("/mnt/with\\777\\400\\377"),
            "/mnt/with\\777\\400\u{fffd}"
        );
        assert_eq!(unescape("/a\\134b\\040c\\1"), "/a\\b c\\1");
    }
}

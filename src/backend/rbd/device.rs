//! An RBD mapping's block device: `/sys/bus/rbd/devices/N` names the image, the kernel calls
//! the device `rbdN`, and udev links it as `/dev/rbd/<pool>[/<namespace>]/<image>`.

use std::fmt;
use std::path::Path;

use super::Mapping;
use crate::backend::HostError;
use crate::backend::block::{DeviceMatcher, Located};
use crate::fsutil::read_trimmed;

/// The block device of one mapping, by the id `rbd map` returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RbdMatcher {
    pub(crate) device_id: u32,
}

impl RbdMatcher {
    /// The device among `mappings`, as sysfs or the simulated kernel lists them.
    pub(crate) fn among<'a>(
        &self,
        mappings: impl IntoIterator<Item = &'a Mapping>,
    ) -> Option<Located> {
        mappings
            .into_iter()
            .find(|m| m.device_id == self.device_id)
            .map(located)
    }
}

fn located(mapping: &Mapping) -> Located {
    let Mapping {
        device_id,
        pool,
        namespace,
        image,
    } = mapping;
    Located {
        kernel_name: format!("rbd{device_id}"),
        link: match namespace {
            Some(ns) => format!("/dev/rbd/{pool}/{ns}/{image}"),
            None => format!("/dev/rbd/{pool}/{image}"),
        },
    }
}

impl fmt::Display for RbdMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/dev/rbd{}", self.device_id)
    }
}

impl DeviceMatcher for RbdMatcher {
    fn locate(&self, sys: &Path) -> Result<Option<Located>, HostError> {
        let devices = sys.join("bus/rbd/devices");
        Ok(read_mapping(&devices, self.device_id).map(|m| located(&m)))
    }
}

/// One mapping from the rbd bus's `devices` directory; None until the kernel has named it.
pub(crate) fn read_mapping(devices: &Path, device_id: u32) -> Option<Mapping> {
    let dir = devices.join(device_id.to_string());
    let read = |name: &str| read_trimmed(&dir.join(name));
    Some(Mapping {
        device_id,
        pool: read("pool")?,
        namespace: read("pool_ns"),
        image: read("name")?,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::backend::block::SystemBlock;
    use crate::backend::block::fixture::{assert_not_there, materialize};
    use crate::backend::{BlockDevice, BlockHost};

    /// The captured host: rbd0 fixpool/vol0, rbd1 fixpool/vol1@snap1, rbd2 fixpool/fixns/vol2,
    /// rbd3 fixpool/vol0 again (read-only), with the /dev/rbd links udev made.
    fn captured() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        materialize(
            include_str!("../../../tests/fixtures/rbd/sysfs-rbd-4maps.txt"),
            root.path(),
        );
        materialize(
            include_str!("../../../tests/fixtures/rbd/dev-rbd.txt"),
            root.path(),
        );
        root
    }

    #[test]
    fn a_mapping_is_located_by_its_device_id_in_a_captured_tree() {
        let root = captured();
        let sys = root.path().join("sys");
        let locate = |device_id| RbdMatcher { device_id }.locate(&sys).unwrap();
        assert_eq!(
            locate(2),
            Some(Located {
                kernel_name: "rbd2".into(),
                link: "/dev/rbd/fixpool/fixns/vol2".into(),
            })
        );
        assert_eq!(
            locate(0),
            Some(Located {
                kernel_name: "rbd0".into(),
                link: "/dev/rbd/fixpool/vol0".into(),
            })
        );
        assert_eq!(locate(7), None);
        assert_eq!(
            read_mapping(&sys.join("bus/rbd/devices"), 2),
            Some(Mapping {
                device_id: 2,
                pool: "fixpool".into(),
                namespace: Some("fixns".into()),
                image: "vol2".into(),
            })
        );
    }

    #[test]
    fn a_captured_mapping_is_the_device_only_while_its_link_points_at_it() {
        let root = captured();
        let block = SystemBlock::without_udev(root.path());
        let wait = |device_id| block.wait_for_device(&RbdMatcher { device_id }, Duration::ZERO);
        assert_eq!(
            wait(2).unwrap(),
            BlockDevice {
                kernel_name: "rbd2".into(),
                device_path: "/dev/rbd/fixpool/fixns/vol2".into(),
                size_bytes: 16 << 20,
                wwn: None,
            }
        );
        // rbd3 maps the same image later, and udev moved the image's link to it.
        assert_not_there(&block, &RbdMatcher { device_id: 0 }, "/dev/rbd0");
        assert_eq!(wait(3).unwrap().device_path, "/dev/rbd/fixpool/vol0");
    }

    #[test]
    fn the_same_mapping_is_located_among_listed_mappings() {
        let mapping = Mapping {
            device_id: 4,
            pool: "volumes".into(),
            namespace: None,
            image: "v1".into(),
        };
        assert_eq!(
            RbdMatcher { device_id: 4 }.among([&mapping]),
            Some(Located {
                kernel_name: "rbd4".into(),
                link: "/dev/rbd/volumes/v1".into(),
            })
        );
        assert_eq!(RbdMatcher { device_id: 5 }.among([&mapping]), None);
    }
}

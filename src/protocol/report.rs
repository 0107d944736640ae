//! A heartbeat's limits: bounded lists, bounded strings, no control characters. The conductor
//! checks them on arrival ([`checked`]); the agent makes its report fit them before it sends it
//! ([`make_sendable`]), so that odd text from a host tool cannot get its heartbeats refused.

use std::convert::Infallible;
use std::fmt;

use thiserror::Error;

use super::text::{escape_controls, is_control};
use super::{Connector, ErrorReport, ForeignAttachment, Heartbeat, VolumeReport};

/// Most volumes one report may list.
pub const MAX_VOLUMES: usize = 1024;
/// Most foreign attachments one report may list.
pub const MAX_FOREIGN: usize = 1024;
/// Most connectors (iqn, MACs, IPs) one report may list.
pub const MAX_CONNECTORS: usize = 256;
/// Most paths one volume may list.
pub const MAX_PATHS: usize = 64;
/// Longest name in a report, in characters: ids, types, kinds, versions, times, WWNs.
pub const MAX_NAME: usize = 255;
/// Longest path or sentence in a report, in characters: device paths, mountpoints, messages.
pub const MAX_TEXT: usize = 4096;

/// Where a string sits in a report: `agent_version`, `volumes[2].error.message`.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    list: Option<(&'static str, usize)>,
    name: &'static str,
}

impl Field {
    /// The fields of the `i`th entry of `list`, by name.
    fn of(list: &'static str, i: usize) -> impl Fn(&'static str) -> Field {
        move |name| Field {
            list: Some((list, i)),
            name,
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.list {
            Some((list, i)) => write!(f, "{list}[{i}].{}", self.name),
            None => f.write_str(self.name),
        }
    }
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ReportError {
    #[error("the report lists {count} {list}; at most {max} are accepted")]
    TooMany {
        list: &'static str,
        count: usize,
        max: usize,
    },
    #[error("{field} has {len} characters; at most {max} are accepted")]
    TooLong {
        field: String,
        len: usize,
        max: usize,
    },
    /// `escaped` is the value's start with its control characters escaped.
    #[error("{field} holds control characters ({escaped:?}); a report's text may hold none")]
    ControlCharacter { field: String, escaped: String },
}

impl ReportError {
    /// The stable kind of every refused report.
    pub fn kind(&self) -> &'static str {
        "invalid_report"
    }
}

/// The report, if it is within the limits.
pub fn checked(mut report: Heartbeat) -> Result<Heartbeat, ReportError> {
    let too_many = |list, count, max| {
        if count > max {
            Err(ReportError::TooMany { list, count, max })
        } else {
            Ok(())
        }
    };
    too_many("volumes", report.volumes.len(), MAX_VOLUMES)?;
    too_many("foreign attachments", report.foreign.len(), MAX_FOREIGN)?;
    too_many("connectors", report.connectors.len(), MAX_CONNECTORS)?;
    for v in &report.volumes {
        too_many("paths of a volume", v.paths.len(), MAX_PATHS)?;
    }
    each_text(&mut report, |field, max, text| {
        if text.chars().any(is_control) {
            let start: String = text.chars().take(80).collect();
            return Err(ReportError::ControlCharacter {
                field: field.to_string(),
                escaped: escape_controls(&start).into_owned(),
            });
        }
        let len = text.chars().count();
        if len > max {
            return Err(ReportError::TooLong {
                field: field.to_string(),
                len,
                max,
            });
        }
        Ok(())
    })?;
    Ok(report)
}

/// Brings the agent's own report within the limits: control characters escaped, overlong
/// strings cut (ending in `…`), lists of paths, connectors and foreign attachments cut.
pub fn make_sendable(report: &mut Heartbeat) {
    report.connectors.truncate(MAX_CONNECTORS);
    report.foreign.truncate(MAX_FOREIGN);
    for v in &mut report.volumes {
        v.paths.truncate(MAX_PATHS);
    }
    let done: Result<(), Infallible> = each_text(report, |_, max, text| {
        let escaped = escape_controls(text);
        if escaped.chars().count() > max {
            let mut cut: String = escaped.chars().take(max - 1).collect();
            cut.push('…');
            *text = cut;
        } else if let std::borrow::Cow::Owned(escaped) = escaped {
            *text = escaped;
        }
        Ok(())
    });
    let Ok(()) = done;
}

/// Calls `f` on every string of the report, with its place and its longest length. The fields
/// are destructured, so a string field added to a report type does not compile until it is
/// listed here.
fn each_text<E>(
    report: &mut Heartbeat,
    mut f: impl FnMut(Field, usize, &mut String) -> Result<(), E>,
) -> Result<(), E> {
    let Heartbeat {
        agent_version,
        generation: _,
        connectors,
        volumes,
        foreign,
    } = report;
    let top = Field {
        list: None,
        name: "agent_version",
    };
    f(top, MAX_NAME, agent_version)?;
    for (i, connector) in connectors.iter_mut().enumerate() {
        let at = Field::of("connectors", i);
        let Connector {
            connector_type,
            connector_id,
        } = connector;
        f(at("type"), MAX_NAME, connector_type)?;
        f(at("connector_id"), MAX_NAME, connector_id)?;
    }
    for (i, volume) in volumes.iter_mut().enumerate() {
        let at = Field::of("volumes", i);
        let VolumeReport {
            target_uuid: _,
            volume_id,
            volume_type,
            state: _,
            device_path,
            paths,
            size_bytes: _,
            wwn,
            mountpoint,
            error,
            degraded,
            unconfirmed: _,
            since,
        } = volume;
        f(at("volume_id"), MAX_NAME, volume_id)?;
        f(at("volume_type"), MAX_NAME, volume_type)?;
        if let Some(path) = device_path {
            f(at("device_path"), MAX_TEXT, path)?;
        }
        for path in paths {
            f(at("paths"), MAX_TEXT, path)?;
        }
        if let Some(wwn) = wwn {
            f(at("wwn"), MAX_NAME, wwn)?;
        }
        if let Some(mountpoint) = mountpoint {
            f(at("mountpoint"), MAX_TEXT, mountpoint)?;
        }
        if let Some(ErrorReport { kind, message }) = error {
            f(at("error.kind"), MAX_NAME, kind)?;
            f(at("error.message"), MAX_TEXT, message)?;
        }
        if let Some(ErrorReport { kind, message }) = degraded {
            f(at("degraded.kind"), MAX_NAME, kind)?;
            f(at("degraded.message"), MAX_TEXT, message)?;
        }
        f(at("since"), MAX_NAME, since)?;
    }
    for (i, attachment) in foreign.iter_mut().enumerate() {
        let at = Field::of("foreign", i);
        let ForeignAttachment {
            volume_type,
            description,
            device_path,
        } = attachment;
        f(at("volume_type"), MAX_NAME, volume_type)?;
        f(at("description"), MAX_TEXT, description)?;
        if let Some(path) = device_path {
            f(at("device_path"), MAX_TEXT, path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::VolumeState;

    fn volume(volume_id: &str) -> VolumeReport {
        VolumeReport {
            target_uuid: uuid::Uuid::nil(),
            volume_id: volume_id.into(),
            volume_type: "iscsi".into(),
            state: VolumeState::Failed,
            device_path: Some("/dev/sdb".into()),
            paths: vec!["/dev/sdb".into()],
            size_bytes: None,
            wwn: None,
            mountpoint: None,
            error: Some(ErrorReport {
                kind: "login_failed".into(),
                message: "iscsiadm: login failed".into(),
            }),
            degraded: None,
            unconfirmed: false,
            since: "2026-11-26T01:52:37Z".into(),
        }
    }

    fn report(volumes: Vec<VolumeReport>) -> Heartbeat {
        Heartbeat {
            agent_version: "0.1.0".into(),
            generation: Some(1),
            connectors: vec![],
            volumes,
            foreign: vec![ForeignAttachment {
                volume_type: "rbd".into(),
                description: "mapping 0 of rbd/img".into(),
                device_path: None,
            }],
        }
    }

    #[test]
    fn a_plain_report_passes_unchanged() {
        let plain = report(vec![volume("vol-1"), volume("données-日本")]);
        assert_eq!(checked(plain.clone()), Ok(plain.clone()));
        let mut sendable = plain.clone();
        make_sendable(&mut sendable);
        assert_eq!(sendable, plain);
    }

    #[test]
    fn control_characters_are_refused_with_the_field_named() {
        let mut forged = report(vec![volume("vol-1"), volume("vol-2")]);
        forged.volumes[1].error.as_mut().unwrap().message =
            "ok\r\x1b]0;pwned\x07\nERROR forged line".into();
        let err = checked(forged).unwrap_err();
        assert_eq!(err.kind(), "invalid_report");
        let text = err.to_string();
        assert!(text.contains("volumes[1].error.message"), "{text}");
        assert!(
            !text.chars().any(is_control),
            "the error is printable: {text:?}"
        );
        let mut forged = report(vec![]);
        forged.foreign[0].description = "\x1b[2J".into();
        assert!(
            checked(forged)
                .unwrap_err()
                .to_string()
                .contains("foreign[0].description")
        );
        let mut forged = report(vec![volume("vol-1")]);
        forged.volumes[0].degraded = Some(ErrorReport {
            kind: "path_down".into(),
            message: "session 1 is \x1b[31mFAILED".into(),
        });
        assert!(
            checked(forged)
                .unwrap_err()
                .to_string()
                .contains("volumes[0].degraded.message")
        );
        let mut forged = report(vec![]);
        forged.agent_version = "1\u{9b}".into();
        assert!(checked(forged).is_err(), "C1 controls too");
    }

    #[test]
    fn lengths_and_counts_are_bounded() {
        let long = report(vec![volume(&"v".repeat(600))]);
        assert_eq!(
            checked(long).unwrap_err(),
            ReportError::TooLong {
                field: "volumes[0].volume_id".into(),
                len: 600,
                max: MAX_NAME
            }
        );
        assert!(checked(report(vec![volume(&"v".repeat(MAX_NAME))])).is_ok());
        let many = report(vec![volume("v"); MAX_VOLUMES + 1]);
        assert!(matches!(
            checked(many),
            Err(ReportError::TooMany {
                list: "volumes",
                ..
            })
        ));
        let mut paths = report(vec![volume("v")]);
        paths.volumes[0].paths = vec!["/dev/sdb".into(); MAX_PATHS + 1];
        assert!(checked(paths).is_err());
    }

    #[test]
    fn the_agent_escapes_and_cuts_what_it_sends() {
        let mut odd = report(vec![volume(&"v".repeat(600))]);
        odd.volumes[0].error.as_mut().unwrap().message = "rbd:\tfailed\x1b[0m".into();
        odd.foreign = vec![odd.foreign[0].clone(); MAX_FOREIGN + 5];
        make_sendable(&mut odd);
        assert_eq!(
            odd.volumes[0].error.as_ref().unwrap().message,
            "rbd:\\tfailed\\u{1b}[0m"
        );
        assert_eq!(odd.volumes[0].volume_id.chars().count(), MAX_NAME);
        assert!(odd.volumes[0].volume_id.ends_with('…'));
        assert_eq!(odd.foreign.len(), MAX_FOREIGN);
        assert!(checked(odd).is_ok());
    }
}

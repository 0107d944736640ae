//! `tether status`: the local agent's view, read from its state directory.

use std::fmt::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use uuid::Uuid;

use tether::agent::{LocalStatus, StateDir};
use tether::protocol::Heartbeat;
use tether::protocol::text::{escape_controls, escape_controls_in_json};

pub fn show(state_dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let status = StateDir::new(state_dir).load_status().with_context(|| {
        format!(
            "no agent status in {}; is the agent running (systemctl status tether-agent)?",
            state_dir.display()
        )
    })?;
    if json {
        let json = serde_json::to_string_pretty(&status)?;
        println!("{}", escape_controls_in_json(&json));
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", format_status(&status));
    // Degraded counts too: a volume with no path up is as good as gone to its users.
    let failing = status.report.volumes.iter().any(|v| {
        v.degraded.is_some()
            || matches!(
                v.state,
                tether::protocol::VolumeState::Failed
                    | tether::protocol::VolumeState::DetachBlocked
            )
    });
    Ok(if failing {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

/// What `tether status` prints. Every string that came from elsewhere (the conductor, a
/// target, a host tool) goes through [`escape_controls`], so none can act on the terminal.
fn format_status(status: &LocalStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node {} ({})",
        escape_controls(status.node_name.as_deref().unwrap_or("-")),
        status
            .node_uuid
            .map(|u| u.to_string())
            .unwrap_or_else(|| "not looked up yet".into())
    );
    let address = match &status.conductor_address {
        Some(address) => format!(" at {}", escape_controls(address)),
        None => String::new(),
    };
    let _ = writeln!(
        out,
        "conductor {}{address}: {}",
        escape_controls(&status.conductor_url),
        escape_controls(&status.conductor)
    );
    if status.conductors.len() > 1 {
        let all: Vec<String> = status
            .conductors
            .iter()
            .map(|c| escape_controls(c).into_owned())
            .collect();
        let _ = writeln!(out, "conductors {}", all.join(", "));
    }
    let _ = writeln!(out, "updated {}", escape_controls(&status.updated_at));
    out.push_str(&format_volumes(&status.report, &[]));
    out
}

/// The report's volumes and foreign attachments, one line each (plus one per error), control
/// characters escaped. `unknown` are targets the conductor says the node does not have.
pub fn format_volumes(report: &Heartbeat, unknown: &[Uuid]) -> String {
    let mut out = String::new();
    if report.volumes.is_empty() {
        out.push_str("no volumes\n");
    } else {
        let _ = writeln!(
            out,
            "{:<20}  {:<6}  {:<14}  {:<20}  DEVICE",
            "VOLUME", "TYPE", "STATE", "SINCE"
        );
        for v in &report.volumes {
            let device = escape_controls(v.device_path.as_deref().unwrap_or("-"));
            let mount = v
                .mountpoint
                .as_ref()
                .map(|m| format!(" on {}", escape_controls(m)))
                .unwrap_or_default();
            // The agent has it, but no answer since its start says it is still assigned.
            let state = match v.unconfirmed {
                true => format!("{} (unconfirmed)", v.state),
                false => v.state.to_string(),
            };
            let _ = writeln!(
                out,
                "{:<20}  {:<6}  {:<14}  {:<20}  {device}{mount}",
                escape_controls(&v.volume_id),
                escape_controls(&v.volume_type),
                state,
                escape_controls(&v.since)
            );
            let notes = [("", &v.error), ("degraded, ", &v.degraded)];
            for (label, e) in notes.iter().filter_map(|(l, e)| Some((l, e.as_ref()?))) {
                let (kind, message) = (escape_controls(&e.kind), escape_controls(&e.message));
                let _ = writeln!(out, "{:<20}  {label}{kind}: {message}", "");
            }
            if unknown.contains(&v.target_uuid) {
                let _ = writeln!(
                    out,
                    "{:<20}  target {} is not assigned to this node (being detached after an \
                     unassign, or a report to look into)",
                    "", v.target_uuid
                );
            }
        }
    }
    for f in &report.foreign {
        let _ = writeln!(
            out,
            "foreign {}: {} (never touched by tether)",
            escape_controls(&f.volume_type),
            escape_controls(&f.description)
        );
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tether::protocol::{ErrorReport, ForeignAttachment, VolumeReport, VolumeState};

    /// A report whose every string tries to act on the terminal.
    pub(crate) fn hostile_report() -> Heartbeat {
        let evil = "\x1b]0;title\x07\rforged";
        Heartbeat {
            agent_version: format!("0.1{evil}"),
            generation: Some(1),
            connectors: vec![],
            volumes: vec![VolumeReport {
                target_uuid: Uuid::nil(),
                volume_id: format!("vol{evil}"),
                volume_type: format!("rbd{evil}"),
                state: VolumeState::Failed,
                device_path: Some(format!("/dev/rbd0{evil}")),
                paths: vec![],
                size_bytes: None,
                wwn: None,
                mountpoint: Some(format!("/srv{evil}")),
                error: Some(ErrorReport {
                    kind: format!("kind{evil}"),
                    message: format!("line\nERROR {evil}\u{9b}2J"),
                }),
                degraded: Some(ErrorReport {
                    kind: format!("path_down{evil}"),
                    message: format!("session 1{evil}"),
                }),
                unconfirmed: true,
                since: format!("2026{evil}"),
            }],
            foreign: vec![ForeignAttachment {
                volume_type: format!("iscsi{evil}"),
                description: format!("session{evil}"),
                device_path: None,
            }],
        }
    }

    /// Nothing in `printed` can act on a terminal: no ESC, BEL, CR, C1 control, and no newline
    /// but those that end lines the formatter wrote (`lines` of them).
    pub(crate) fn assert_inert(printed: &str, lines: usize) {
        assert!(
            !printed.chars().any(|c| c.is_control() && c != '\n'),
            "{printed:?}"
        );
        assert_eq!(printed.matches('\n').count(), lines, "{printed}");
        assert!(
            printed.contains("\\u{1b}]0;title\\u{7}\\rforged"),
            "{printed}"
        );
    }

    #[test]
    fn remote_text_is_printed_escaped() {
        let report = hostile_report();
        let printed = format_volumes(&report, &[Uuid::nil()]);
        // Header, volume, error, degraded, not-assigned note, foreign.
        assert_inert(&printed, 6);
        assert!(printed.contains("line\\nERROR"), "{printed}");
        assert!(printed.contains("\\u{9b}2J"), "{printed}");
        assert!(
            printed.contains("is not assigned to this node"),
            "{printed}"
        );
        let status = LocalStatus {
            node_uuid: None,
            node_name: Some("n\x1b[2Jame".into()),
            conductor_url: "http://192.0.2.1:6385".into(),
            conductor_address: None,
            conductors: vec![],
            conductor: "answer\r\x1b[1A".into(),
            updated_at: "now".into(),
            report,
        };
        let printed = format_status(&status);
        assert_inert(&printed, 3 + 5);
        assert!(printed.contains("n\\u{1b}[2Jame"), "{printed}");
    }

    #[test]
    fn the_conductor_in_use_is_named_with_its_address_and_the_others() {
        let status = LocalStatus {
            node_uuid: None,
            node_name: None,
            conductor_url: "https://conductors.example:6387".into(),
            conductor_address: Some("192.0.2.2".into()),
            conductors: vec![
                "https://conductors.example:6387".into(),
                "https://192.0.2.9:6387".into(),
            ],
            conductor: "assignment generation 3".into(),
            updated_at: "now".into(),
            report: Heartbeat {
                agent_version: "0.1.0".into(),
                generation: Some(3),
                connectors: vec![],
                volumes: vec![],
                foreign: vec![],
            },
        };
        let printed = format_status(&status);
        let lines: Vec<&str> = printed.lines().collect();
        assert_eq!(
            lines[1],
            "conductor https://conductors.example:6387 at 192.0.2.2: assignment generation 3"
        );
        assert_eq!(
            lines[2],
            "conductors https://conductors.example:6387, https://192.0.2.9:6387"
        );
    }

    #[test]
    fn plain_text_is_printed_as_it_is() {
        let mut report = hostile_report();
        report.volumes[0].volume_id = "vol-données".into();
        report.volumes[0].error = None;
        report.volumes[0].degraded = None;
        report.foreign.clear();
        let printed = format_volumes(&report, &[]);
        assert!(printed.contains("vol-données "), "{printed}");
        assert_eq!(printed.lines().count(), 2, "{printed}");
        assert!(printed.contains(" failed (unconfirmed) "), "{printed}");
        report.volumes[0].unconfirmed = false;
        let printed = format_volumes(&report, &[]);
        assert!(!printed.contains("unconfirmed"), "{printed}");
    }
}

//! `tether status`: the local agent's view, read from its state directory.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use tether::agent::StateDir;
use tether::protocol::Heartbeat;

pub fn show(state_dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let status = StateDir::new(state_dir).load_status().with_context(|| {
        format!(
            "no agent status in {}; is the agent running (systemctl status tether-agent)?",
            state_dir.display()
        )
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "node {} ({})",
        status.node_name.as_deref().unwrap_or("-"),
        status
            .node_uuid
            .map(|u| u.to_string())
            .unwrap_or_else(|| "not looked up yet".into())
    );
    println!("conductor {}: {}", status.conductor_url, status.conductor);
    println!("updated {}", status.updated_at);
    print_volumes(&status.report);
    let failing = status.report.volumes.iter().any(|v| {
        matches!(
            v.state,
            tether::protocol::VolumeState::Failed | tether::protocol::VolumeState::DetachBlocked
        )
    });
    Ok(if failing {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

pub fn print_volumes(report: &Heartbeat) {
    if report.volumes.is_empty() {
        println!("no volumes");
    } else {
        println!(
            "{:<20}  {:<6}  {:<14}  {:<20}  DEVICE",
            "VOLUME", "TYPE", "STATE", "SINCE"
        );
        for v in &report.volumes {
            let device = v.device_path.as_deref().unwrap_or("-");
            let mount = v
                .mountpoint
                .as_ref()
                .map(|m| format!(" on {m}"))
                .unwrap_or_default();
            println!(
                "{:<20}  {:<6}  {:<14}  {:<20}  {device}{mount}",
                v.volume_id,
                v.volume_type,
                v.state.as_str(),
                v.since
            );
            if let Some(e) = &v.error {
                println!("{:<20}  {}: {}", "", e.kind, e.message);
            }
        }
    }
    for f in &report.foreign {
        println!(
            "foreign {}: {} (never touched by tether)",
            f.volume_type, f.description
        );
    }
}

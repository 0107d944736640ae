//! `tether ctl volume`: Cinder volumes on nodes, attached and detached through the conductor,
//! with each phase shown as it happens.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Subcommand;
use serde_json::json;

use super::{Api, MountArgs, print_json};
use tether::protocol::VolumeState;
use tether::protocol::cinder::{CinderPhase, CinderVolume, CinderVolumeList};
use tether::protocol::text::escape_controls;

#[derive(Subcommand)]
pub(super) enum VolumeCommand {
    /// Attach a Cinder volume (id or name) to a node. Waits until Cinder shows it in-use and the
    /// node has the device (and the mount), printing each phase with its time; exits 1 with the
    /// failing phase and its error kind.
    Attach {
        /// Node name or uuid.
        node: String,
        /// Cinder volume id or name.
        volume: String,
        #[command(flatten)]
        mount: MountArgs,
        #[arg(long)]
        read_only: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Detach a Cinder volume from a node: the node lets it go first, then the Cinder attachment
    /// is deleted. Waits for both unless --no-wait.
    Detach {
        node: String,
        volume: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Cinder volumes on nodes: Cinder's status and attachment beside what the agent reports.
    List {
        /// Only this node's.
        node: Option<String>,
        /// A JSON array, one object per volume.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
pub(super) struct WaitArgs {
    /// Return once the conductor accepted the request.
    #[arg(long)]
    no_wait: bool,
    /// Seconds to wait for the end.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

pub(super) async fn run(api: &Api, cmd: VolumeCommand) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    match cmd {
        VolumeCommand::Attach {
            node,
            volume,
            mount,
            read_only,
            wait,
        } => {
            let mut body = json!({"volume": volume, "read_only": read_only});
            if let Some(spec) = mount.spec() {
                body["mount"] = spec;
            }
            let accepted: CinderVolume = api
                .post(&format!("/v1/nodes/{node}/volumes"), &body)
                .await?;
            let mounting = mount.mount.is_some();
            follow(api, &accepted, "", started, &wait, |v| match v {
                None => Some(Err(
                    "the volume is no longer on the node (detached meanwhile)".into(),
                )),
                Some(v) => attach_verdict(v, mounting),
            })
            .await
        }
        VolumeCommand::Detach { node, volume, wait } => {
            let accepted: CinderVolume = api
                .call(
                    reqwest::Method::DELETE,
                    &format!("/v1/nodes/{node}/volumes/{volume}"),
                    None::<&()>,
                )
                .await?;
            follow(api, &accepted, "detach ", started, &wait, |v| match v {
                None => Some(Ok("detached; the Cinder attachment is deleted".into())),
                Some(_) => None,
            })
            .await
        }
        VolumeCommand::List { node, json } => {
            let path = match &node {
                Some(node) => format!("/v1/nodes/{node}/volumes"),
                None => "/v1/volumes".to_string(),
            };
            let list: CinderVolumeList = api.get(&path).await?;
            if json {
                print_json(&list.volumes)?;
            } else {
                print!("{}", format_list(&list.volumes));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The end of an attach, if `v` shows one: `Ok` done, `Err` failed (with why).
fn attach_verdict(v: &CinderVolume, mounting: bool) -> Option<Result<String, String>> {
    if v.phase == CinderPhase::Failed {
        let (kind, message) = error_of(v);
        return Some(Err(format!(
            "failed while {}: {kind}: {message}\n\
             (`tether ctl volume detach` cleans up what was made)",
            last_phase(v)
        )));
    }
    if v.agent_state == Some(VolumeState::Failed) {
        let (kind, message) = error_of(v);
        return Some(Err(format!(
            "failed while attaching on the node: {kind}: {message}\n(the agent keeps retrying; \
             `tether ctl volume detach` gives the volume up)"
        )));
    }
    let on_node = match mounting {
        true => v.agent_state == Some(VolumeState::Mounted),
        false => matches!(
            v.agent_state,
            Some(VolumeState::Attached | VolumeState::Mounted)
        ),
    };
    (v.phase == CinderPhase::Attached && on_node).then(|| Ok("done".into()))
}

/// Prints the accepted request, then each change of the volume until `verdict` sees an end
/// (given the volume as listed, or `None` once it is no longer listed) or the time is up.
async fn follow(
    api: &Api,
    accepted: &CinderVolume,
    what: &str,
    started: Instant,
    wait: &WaitArgs,
    verdict: impl Fn(Option<&CinderVolume>) -> Option<Result<String, String>>,
) -> anyhow::Result<ExitCode> {
    println!(
        "{:>7}  {what}accepted: Cinder volume {}{} of node {}",
        seconds(started),
        escape_controls(&accepted.volume_id),
        name_of(accepted),
        escape_controls(&accepted.node)
    );
    if wait.no_wait {
        return Ok(ExitCode::SUCCESS);
    }
    let path = format!("/v1/nodes/{}/volumes", accepted.node_uuid);
    // Phases already passed when the request was accepted (an attach's, for a detach) are
    // history, not progress.
    let mut shown = Shown {
        phases: accepted.phases.len(),
        ..Shown::default()
    };
    let deadline = started + Duration::from_secs(wait.timeout);
    loop {
        let list: CinderVolumeList = api.get(&path).await?;
        let found = list
            .volumes
            .into_iter()
            .find(|v| v.volume_id == accepted.volume_id);
        if let Some(v) = &found {
            shown.show(v, started);
        }
        match verdict(found.as_ref()) {
            Some(Ok(done)) => {
                println!("{:>7}  {done}", seconds(started));
                return Ok(ExitCode::SUCCESS);
            }
            Some(Err(why)) => {
                println!("{why}");
                return Ok(ExitCode::from(1));
            }
            None => {}
        }
        if Instant::now() > deadline {
            let phase = found.as_ref().map(last_phase).unwrap_or_default();
            println!(
                "timed out after {} s while {phase} (see `tether ctl volume list`)",
                wait.timeout
            );
            return Ok(ExitCode::from(1));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn seconds(since: Instant) -> String {
    format!("{:.1} s", since.elapsed().as_secs_f64())
}

fn name_of(v: &CinderVolume) -> String {
    v.volume_name
        .as_deref()
        .map(|n| format!(" ({})", escape_controls(n)))
        .unwrap_or_default()
}

fn last_phase(v: &CinderVolume) -> String {
    match (v.phase, v.agent_state) {
        (CinderPhase::Attaching, Some(state)) => format!("attaching (the agent: {state})"),
        (phase, _) => phase.to_string(),
    }
}

fn error_of(v: &CinderVolume) -> (String, String) {
    match &v.error {
        Some(e) => (
            escape_controls(&e.kind).into_owned(),
            escape_controls(&e.message).into_owned(),
        ),
        None => ("unknown".into(), "no error recorded".into()),
    }
}

/// What was printed already, so that each change is printed once, as it happens.
#[derive(Default)]
struct Shown {
    phases: usize,
    agent: Option<VolumeState>,
    device: Option<String>,
    cinder: Option<String>,
    unreachable: Option<bool>,
    error: Option<String>,
}

impl Shown {
    fn show(&mut self, v: &CinderVolume, started: Instant) {
        let at = seconds(started);
        for p in v.phases.iter().skip(self.phases) {
            println!("{at:>7}  {}", describe(p.phase));
        }
        self.phases = v.phases.len();
        if v.agent_state != self.agent {
            if let Some(state) = v.agent_state {
                println!("{at:>7}  the node's agent: {state}");
            }
            self.agent = v.agent_state;
        }
        if v.device.is_some() && v.device != self.device {
            let device = escape_controls(v.device.as_deref().unwrap_or_default());
            match &v.mountpoint {
                Some(m) => println!(
                    "{at:>7}  device {device}, mounted at {}",
                    escape_controls(m)
                ),
                None => println!("{at:>7}  device {device}"),
            }
            self.device = v.device.clone();
        }
        if v.cinder_status.is_some() && v.cinder_status != self.cinder {
            let status = escape_controls(v.cinder_status.as_deref().unwrap_or_default());
            println!("{at:>7}  Cinder: {status}");
            self.cinder = v.cinder_status.clone();
        }
        if self.unreachable != Some(!v.cinder_reachable) {
            if !v.cinder_reachable {
                let why = escape_controls(v.cinder_error.as_deref().unwrap_or_default());
                println!("{at:>7}  Cinder unreachable, retrying: {why}");
            } else if self.unreachable == Some(true) {
                println!("{at:>7}  Cinder answers again");
            }
            self.unreachable = Some(!v.cinder_reachable);
        }
        let error = v
            .error
            .as_ref()
            .map(|e| format!("{}: {}", e.kind, e.message));
        if error.is_some() && error != self.error {
            println!(
                "{at:>7}  {}",
                escape_controls(error.as_deref().unwrap_or_default())
            );
        }
        self.error = error;
    }
}

fn describe(phase: CinderPhase) -> &'static str {
    match phase {
        CinderPhase::Creating => "creating the Cinder attachment",
        CinderPhase::Attaching => "attachment created; the node's agent is attaching",
        CinderPhase::Completing => "the node has the device; completing the attachment",
        CinderPhase::Attached => "Cinder: in-use by the node",
        CinderPhase::Detaching => "unassigned; the node's agent is detaching",
        CinderPhase::Deleting => "the node let it go; deleting the Cinder attachment",
        CinderPhase::Failed => "failed",
    }
}

fn format_list(volumes: &[CinderVolume]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if volumes.is_empty() {
        out.push_str("no Cinder volumes\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<16}  {:<36}  {:<10}  {:<10}  {:<14}  DEVICE",
        "NODE", "VOLUME", "PHASE", "CINDER", "AGENT"
    );
    for v in volumes {
        let cinder = match v.cinder_reachable {
            true => v.cinder_status.clone().unwrap_or_else(|| "-".into()),
            false => "unreachable".into(),
        };
        let _ = writeln!(
            out,
            "{:<16}  {:<36}  {:<10}  {:<10}  {:<14}  {}{}",
            escape_controls(&v.node),
            escape_controls(&v.volume_id),
            v.phase.as_str(),
            escape_controls(&cinder),
            v.agent_state.map(|s| s.as_str()).unwrap_or("-"),
            escape_controls(v.device.as_deref().unwrap_or("-")),
            v.mountpoint
                .as_deref()
                .map(|m| format!(" on {}", escape_controls(m)))
                .unwrap_or_default()
        );
        if let Some(name) = &v.volume_name {
            let _ = writeln!(out, "{:<16}  name {}", "", escape_controls(name));
        }
        if let Some(id) = &v.attachment_id {
            let _ = writeln!(out, "{:<16}  attachment {}", "", escape_controls(id));
        }
        if let Some(e) = &v.error {
            let _ = writeln!(
                out,
                "{:<16}  {}: {}",
                "",
                escape_controls(&e.kind),
                escape_controls(&e.message)
            );
        }
        if let Some(why) = v.cinder_error.as_deref().filter(|_| !v.cinder_reachable) {
            let _ = writeln!(
                out,
                "{:<16}  Cinder unreachable: {}",
                "",
                escape_controls(why)
            );
        }
    }
    out
}

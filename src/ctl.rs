//! `tether ctl`: the operator's client for the conductor's API.

mod volume;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use tether::config::DEFAULT_LISTEN;
use tether::protocol::text::{escape_controls, escape_controls_in_json};
use tether::protocol::{
    ConnectorCreate, ConnectorList, ErrorBody, NodeCreate, NodeList, NodeStatus, TargetCreate,
    TargetList, VolumeConnector, VolumeTarget,
};

#[derive(Args)]
pub struct CtlArgs {
    /// Conductor URL.
    #[arg(long, env = "TETHER_URL", default_value_t = format!("http://{DEFAULT_LISTEN}"))]
    url: String,
    /// File holding the admin token (the conductor writes it on first start).
    /// TETHER_ADMIN_TOKEN takes precedence.
    #[arg(long, default_value = "tether-admin.token")]
    token_file: PathBuf,
    /// PEM file of the CA that signed an https:// conductor's certificate.
    #[arg(long, env = "TETHER_CA_FILE")]
    ca_file: Option<PathBuf>,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Enroll, list and remove nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// The node's initiator identities (iqn, mac, ip, wwpn…).
    #[command(subcommand)]
    Connector(ConnectorCommand),
    /// Assign and unassign volume targets.
    #[command(subcommand)]
    Target(TargetCommand),
    /// Attach and detach Cinder volumes (the conductor's [cinder] section).
    #[command(subcommand)]
    Volume(volume::VolumeCommand),
    /// Wait until the node's agent reports a volume in a state; print its report as JSON.
    /// Exits 1 if the state is not reached in time.
    Wait {
        /// Node name or uuid.
        node: String,
        /// Target uuid or volume id.
        volume: String,
        /// attached, mounted, failed, detach_blocked… or `gone` (no longer reported).
        #[arg(long)]
        state: String,
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// The node's volumes as its agent last reported them.
    Status {
        /// Node name or uuid.
        node: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Enroll a node under a name, with the MAC addresses its agent is found by.
    Create {
        name: String,
        /// A MAC address the agent looks the node up by (repeat for more).
        #[arg(long = "mac", required = true)]
        macs: Vec<String>,
        #[arg(long)]
        uuid: Option<Uuid>,
        /// Provision the agent token from this file instead of issuing it at first lookup.
        #[arg(long)]
        agent_token_file: Option<PathBuf>,
    },
    /// List the nodes, with when each was last seen.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Print one node as JSON.
    Show { node: String },
    /// Replace a manual node's MAC addresses (a node synced from Ironic follows its ports).
    SetMacs {
        node: String,
        /// A MAC address the agent looks the node up by (repeat for more).
        #[arg(long = "mac", required = true)]
        macs: Vec<String>,
    },
    /// Remove a node.
    Delete { node: String },
    /// Forget the issued agent token; the node's next lookup receives a new one.
    ResetToken { node: String },
}

#[derive(Subcommand)]
enum ConnectorCommand {
    /// Add an initiator identity (--type iqn|mac|ip|wwpn… --id VALUE) to a node.
    Create {
        node: String,
        #[arg(long = "type")]
        connector_type: String,
        #[arg(long)]
        id: String,
    },
    /// List connectors as JSON, of one node or of all.
    List {
        #[arg(long)]
        node: Option<String>,
    },
    /// Remove a connector.
    Delete { uuid: Uuid },
}

#[derive(Subcommand)]
enum TargetCommand {
    /// Assign a volume. Give --portal/--iqn/--lun for iSCSI, --rbd-name/--mon for RBD,
    /// --nqn/--portal with --ns-uuid or --nsid for NVMe over TCP, or --type with
    /// --properties-file for anything Cinder produced.
    Create(Box<TargetArgs>),
    /// List the assigned targets, of one node or of all.
    List {
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Print one target as JSON (secrets masked).
    Show { uuid: Uuid },
    /// Unassign a volume; the agent detaches it once nothing uses it.
    Delete { uuid: Uuid },
    /// Record that the volume grew at the storage (after growing the LUN, image or namespace):
    /// the node's agent grows the device, and the file system with `grow` in its mount.
    Resize {
        uuid: Uuid,
        /// The new size: bytes, or with a binary suffix (K, M, G, T; 10G is 10 GiB).
        #[arg(long, value_parser = parse_size)]
        size: u64,
    },
}

/// `10737418240`, `10G`, `10GiB`: bytes, or binary multiples.
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (bytes, or a number and K, M, G or T)"))?;
    let shift = match unit.trim().to_ascii_uppercase().trim_end_matches("IB") {
        "" | "B" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        other => return Err(format!("unknown size unit {other:?} (K, M, G or T)")),
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[derive(Args)]
struct TargetArgs {
    /// Node name or uuid.
    node: String,
    /// The volume's id (Cinder's volume id), unique per node.
    #[arg(long)]
    volume_id: String,
    /// iscsi, rbd or nvmeof; inferred from the other options when absent.
    #[arg(long = "type")]
    volume_type: Option<String>,
    /// JSON object of connection properties (Cinder's connection_info data).
    #[arg(long)]
    properties_file: Option<PathBuf>,
    /// iSCSI or NVMe/TCP portal, host:port.
    #[arg(long)]
    portal: Option<String>,
    /// NVMe subsystem NQN (with --portal, and --ns-uuid or --nsid).
    #[arg(long)]
    nqn: Option<String>,
    /// NVMe namespace UUID.
    #[arg(long)]
    ns_uuid: Option<String>,
    /// NVMe namespace id.
    #[arg(long)]
    nsid: Option<u32>,
    /// File holding the host's DH-HMAC-CHAP secret (DHHC-1:…).
    #[arg(long)]
    dhchap_secret_file: Option<PathBuf>,
    /// File holding the controller's DH-HMAC-CHAP secret, for bidirectional authentication.
    #[arg(long)]
    dhchap_ctrl_secret_file: Option<PathBuf>,
    /// iSCSI target name.
    #[arg(long)]
    iqn: Option<String>,
    /// iSCSI LUN.
    #[arg(long)]
    lun: Option<u32>,
    /// CHAP user name (the initiator's).
    #[arg(long)]
    chap_user: Option<String>,
    /// File holding the CHAP password (kept off the command line, which others can read).
    #[arg(long)]
    chap_password_file: Option<PathBuf>,
    /// Mutual CHAP: the user name the target answers with.
    #[arg(long)]
    mutual_chap_user: Option<String>,
    /// File holding the mutual CHAP password.
    #[arg(long)]
    mutual_chap_password_file: Option<PathBuf>,
    /// RBD image as pool/image or pool/namespace/image.
    #[arg(long)]
    rbd_name: Option<String>,
    /// Ceph monitor host:port (repeat for more).
    #[arg(long = "mon")]
    monitors: Vec<String>,
    /// cephx user, without "client." (Cinder's auth_username).
    #[arg(long)]
    ceph_user: Option<String>,
    /// File holding the cephx key.
    #[arg(long)]
    ceph_key_file: Option<PathBuf>,
    /// Attach read-only (access_mode "ro").
    #[arg(long)]
    read_only: bool,
    /// Order among the node's volumes (Ironic's boot_index).
    #[arg(long)]
    boot_index: Option<u32>,
    /// The volume's size at the storage, when known (see `target resize`).
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    #[command(flatten)]
    mount: MountArgs,
}

/// Where and how the node mounts the volume: a target's `extra.mount`.
#[derive(Args)]
struct MountArgs {
    /// Mount the device here on the node.
    #[arg(long)]
    mount: Option<PathBuf>,
    /// Filesystem type for --mount.
    #[arg(long, default_value = "ext4")]
    fstype: String,
    /// Mount options for --mount, comma-separated.
    #[arg(long)]
    mount_options: Option<String>,
    /// Format the device when it holds no filesystem (never when it does).
    #[arg(long)]
    mkfs: bool,
    /// Grow the file system online when the volume grows (ext2/3/4, XFS).
    #[arg(long)]
    grow: bool,
}

impl MountArgs {
    /// `extra.mount`, when --mount is given.
    fn spec(&self) -> Option<Value> {
        let path = self.mount.as_ref()?;
        Some(json!({
            "path": path,
            "fstype": self.fstype,
            "options": self.mount_options,
            "mkfs": self.mkfs,
            "grow": self.grow,
        }))
    }
}

struct Api {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Api {
    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<T> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the conductor at {}", self.url))?;
        let status = response.status();
        if status.is_success() {
            if status == reqwest::StatusCode::NO_CONTENT {
                return Ok(serde_json::from_value(Value::Null)?);
            }
            return response
                .json()
                .await
                .context("reading the conductor's answer");
        }
        match response.json::<ErrorBody>().await {
            Ok(body) => bail!(
                "{} ({}): {}",
                escape_controls(&body.error.kind),
                status.as_u16(),
                escape_controls(&body.error.message)
            ),
            Err(_) => bail!("the conductor answered {status}"),
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call(reqwest::Method::GET, path, None::<&()>).await
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<T> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn patch<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<T> {
        self.call(reqwest::Method::PATCH, path, Some(body)).await
    }

    async fn delete(&self, path: &str) -> anyhow::Result<()> {
        self.call::<()>(reqwest::Method::DELETE, path, None::<&()>)
            .await
    }

    async fn node_uuid(&self, ident: &str) -> anyhow::Result<Uuid> {
        Ok(self
            .get::<tether::protocol::Node>(&format!("/v1/nodes/{ident}"))
            .await?
            .uuid)
    }
}

fn read_secret(path: &Path) -> anyhow::Result<String> {
    tether::fsutil::read_trimmed(path)
        .with_context(|| format!("reading the secret file {}", path.display()))
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(value)?;
    println!("{}", escape_controls_in_json(&json));
    Ok(())
}

pub async fn run(args: CtlArgs) -> anyhow::Result<ExitCode> {
    let token = match std::env::var("TETHER_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
    {
        Some(token) => token,
        None => tether::fsutil::read_trimmed(&args.token_file).with_context(|| {
            format!(
                "no admin token: set TETHER_ADMIN_TOKEN or give --token-file (tried {})",
                args.token_file.display()
            )
        })?,
    };
    let api = Api {
        http: tether::agent::trusting(reqwest::Client::builder(), args.ca_file.as_deref())?
            .build()
            .context("setting up the HTTP client")?,
        url: args.url.trim_end_matches('/').to_string(),
        token,
    };
    match args.command {
        CtlCommand::Node(cmd) => node(&api, cmd).await?,
        CtlCommand::Connector(cmd) => connector(&api, cmd).await?,
        CtlCommand::Target(cmd) => target(&api, cmd).await?,
        CtlCommand::Volume(cmd) => return volume::run(&api, cmd).await,
        CtlCommand::Wait {
            node,
            volume,
            state,
            timeout,
        } => return wait(&api, &node, &volume, &state, timeout).await,
        CtlCommand::Status { node, json } => {
            let uuid = api.node_uuid(&node).await?;
            let status: NodeStatus = api.get(&format!("/v1/nodes/{uuid}/volume/status")).await?;
            if json {
                print_json(&status)?;
            } else {
                print!("{}", format_node_status(&status));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn node(api: &Api, cmd: NodeCommand) -> anyhow::Result<()> {
    match cmd {
        NodeCommand::Create {
            name,
            macs,
            uuid,
            agent_token_file,
        } => {
            let agent_token = agent_token_file
                .as_ref()
                .map(|p| read_secret(p))
                .transpose()?;
            let node: tether::protocol::Node = api
                .post(
                    "/v1/nodes",
                    &NodeCreate {
                        name,
                        uuid,
                        addresses: macs,
                        agent_token,
                    },
                )
                .await?;
            println!(
                "created node {} ({})",
                escape_controls(&node.name),
                node.uuid
            );
        }
        NodeCommand::List { json } => {
            let list: NodeList = api.get("/v1/nodes").await?;
            if json {
                return print_json(&list);
            }
            print!("{}", format_node_list(&list));
        }
        NodeCommand::SetMacs { node, macs } => {
            let uuid = api.node_uuid(&node).await?;
            let n: tether::protocol::Node = api
                .patch(&format!("/v1/nodes/{uuid}"), &json!({ "addresses": macs }))
                .await?;
            println!(
                "node {} is found by {}",
                escape_controls(&n.name),
                escape_controls(&n.addresses.join(","))
            );
        }
        NodeCommand::Show { node } => {
            let n: tether::protocol::Node = api.get(&format!("/v1/nodes/{node}")).await?;
            print_json(&n)?;
        }
        NodeCommand::Delete { node } => {
            let uuid = api.node_uuid(&node).await?;
            api.delete(&format!("/v1/nodes/{uuid}")).await?;
            println!("deleted node {uuid}");
        }
        NodeCommand::ResetToken { node } => {
            let uuid = api.node_uuid(&node).await?;
            api.post::<()>(&format!("/v1/nodes/{uuid}/reset_token"), &json!({}))
                .await?;
            println!("the token of node {uuid} is reset; its next lookup receives a new one");
        }
    }
    Ok(())
}

async fn connector(api: &Api, cmd: ConnectorCommand) -> anyhow::Result<()> {
    match cmd {
        ConnectorCommand::Create {
            node,
            connector_type,
            id,
        } => {
            let node_uuid = api.node_uuid(&node).await?;
            let c: VolumeConnector = api
                .post(
                    "/v1/volume/connectors",
                    &ConnectorCreate {
                        node_uuid,
                        connector_type,
                        connector_id: id,
                    },
                )
                .await?;
            println!(
                "created connector {} ({} {})",
                c.uuid,
                escape_controls(&c.connector_type),
                escape_controls(&c.connector_id)
            );
        }
        ConnectorCommand::List { node } => {
            let query = node.map(|n| format!("?node={n}")).unwrap_or_default();
            let list: ConnectorList = api.get(&format!("/v1/volume/connectors{query}")).await?;
            print_json(&list)?;
        }
        ConnectorCommand::Delete { uuid } => {
            api.delete(&format!("/v1/volume/connectors/{uuid}")).await?;
            println!("deleted connector {uuid}");
        }
    }
    Ok(())
}

fn target_request(node_uuid: Uuid, a: &TargetArgs) -> anyhow::Result<TargetCreate> {
    let mut props: Map<String, Value> = match &a.properties_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            match serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", path.display()))?
            {
                Value::Object(map) => map,
                _ => bail!("{} must hold a JSON object", path.display()),
            }
        }
        None => Map::new(),
    };
    let mut set = |key: &str, value: Value| {
        props.insert(key.to_string(), value);
    };
    if let Some(nqn) = &a.nqn {
        set("target_nqn", json!(nqn));
        if let Some(p) = &a.portal {
            let (host, port) = p
                .rsplit_once(':')
                .context("--portal is host:port (4420 is NVMe/TCP's port)")?;
            set(
                "portals",
                json!([[host.trim_matches(['[', ']']), port, "tcp"]]),
            );
        }
        if let Some(uuid) = &a.ns_uuid {
            set("vol_uuid", json!(uuid));
        }
        if let Some(nsid) = a.nsid {
            set("ns_id", json!(nsid));
        }
        if let Some(file) = &a.dhchap_secret_file {
            set("dhchap_secret", json!(read_secret(file)?));
        }
        if let Some(file) = &a.dhchap_ctrl_secret_file {
            set("dhchap_ctrl_secret", json!(read_secret(file)?));
        }
    } else if let Some(p) = &a.portal {
        set("target_portal", json!(p));
    }
    if let Some(i) = &a.iqn {
        set("target_iqn", json!(i));
    }
    if let Some(l) = a.lun {
        set("target_lun", json!(l));
    }
    if let Some(user) = &a.chap_user {
        let file = a
            .chap_password_file
            .as_ref()
            .context("--chap-user needs --chap-password-file")?;
        set("auth_method", json!("CHAP"));
        set("auth_username", json!(user));
        set("auth_password", json!(read_secret(file)?));
    }
    if let Some(user) = &a.mutual_chap_user {
        let file = a
            .mutual_chap_password_file
            .as_ref()
            .context("--mutual-chap-user needs --mutual-chap-password-file")?;
        set("auth_username_in", json!(user));
        set("auth_password_in", json!(read_secret(file)?));
    }
    if let Some(name) = &a.rbd_name {
        set("name", json!(name));
        let (hosts, ports): (Vec<String>, Vec<String>) = a
            .monitors
            .iter()
            .map(|m| match m.rsplit_once(':') {
                Some((h, p)) => (h.trim_matches(['[', ']']).to_string(), p.to_string()),
                None => (m.clone(), "6789".to_string()),
            })
            .unzip();
        set("hosts", json!(hosts));
        set("ports", json!(ports));
    }
    if let Some(user) = &a.ceph_user {
        set("auth_username", json!(user));
    }
    if let Some(file) = &a.ceph_key_file {
        set("auth_key", json!(read_secret(file)?));
    }
    if a.read_only {
        set("access_mode", json!("ro"));
    }
    let volume_type = match (&a.volume_type, &a.rbd_name, &a.nqn) {
        (Some(t), _, _) => t.clone(),
        (None, Some(_), _) => "rbd".into(),
        (None, None, Some(_)) => "nvmeof".into(),
        (None, None, None) => "iscsi".into(),
    };
    let mut extra = Map::new();
    if let Some(mount) = a.mount.spec() {
        extra.insert("mount".into(), mount);
    }
    Ok(TargetCreate {
        node_uuid,
        volume_type,
        volume_id: a.volume_id.clone(),
        uuid: None,
        boot_index: a.boot_index,
        properties: props,
        extra,
        size_bytes: a.size,
    })
}

async fn target(api: &Api, cmd: TargetCommand) -> anyhow::Result<()> {
    match cmd {
        TargetCommand::Create(args) => {
            let node_uuid = api.node_uuid(&args.node).await?;
            let request = target_request(node_uuid, &args)?;
            let t: VolumeTarget = api.post("/v1/volume/targets", &request).await?;
            println!(
                "assigned {} volume {} to node {} as target {}",
                escape_controls(&t.volume_type),
                escape_controls(&t.volume_id),
                t.node_uuid,
                t.uuid
            );
        }
        TargetCommand::List { node, json } => {
            let query = node.map(|n| format!("?node={n}")).unwrap_or_default();
            let list: TargetList = api.get(&format!("/v1/volume/targets{query}")).await?;
            if json {
                return print_json(&list);
            }
            println!("{:<36}  {:<36}  {:<6}  VOLUME", "TARGET", "NODE", "TYPE");
            for t in list.targets {
                println!(
                    "{:<36}  {:<36}  {:<6}  {}",
                    t.uuid,
                    t.node_uuid,
                    escape_controls(&t.volume_type),
                    escape_controls(&t.volume_id)
                );
            }
        }
        TargetCommand::Show { uuid } => {
            let t: VolumeTarget = api.get(&format!("/v1/volume/targets/{uuid}")).await?;
            print_json(&t)?;
        }
        TargetCommand::Resize { uuid, size } => {
            let t: VolumeTarget = api
                .patch(
                    &format!("/v1/volume/targets/{uuid}"),
                    &tether::protocol::TargetResize { size_bytes: size },
                )
                .await?;
            println!(
                "target {} of node {} is {size} bytes; its agent grows the device",
                t.uuid, t.node_uuid
            );
        }
        TargetCommand::Delete { uuid } => {
            api.delete(&format!("/v1/volume/targets/{uuid}")).await?;
            println!("unassigned target {uuid}; the agent detaches it once nothing uses it");
        }
    }
    Ok(())
}

/// Polls the node's last report: a client-side convenience for scripts and deploy tooling.
async fn wait(
    api: &Api,
    node: &str,
    volume: &str,
    state: &str,
    timeout: u64,
) -> anyhow::Result<ExitCode> {
    let uuid = api.node_uuid(node).await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout);
    loop {
        let status: NodeStatus = api.get(&format!("/v1/nodes/{uuid}/volume/status")).await?;
        let found = status.report.as_ref().and_then(|r| {
            r.volumes
                .iter()
                .find(|v| v.target_uuid.to_string() == volume || v.volume_id == volume)
        });
        match found {
            Some(v) if v.state.as_str() == state => {
                print_json(v)?;
                return Ok(ExitCode::SUCCESS);
            }
            None if state == "gone" && status.report.is_some() => return Ok(ExitCode::SUCCESS),
            _ => {}
        }
        if std::time::Instant::now() > deadline {
            eprintln!(
                "volume {volume} of node {node} did not reach {state} within {timeout}s; \
                 last seen: {}",
                found
                    .map(|v| serde_json::to_string(v).unwrap_or_default())
                    .map(|json| escape_controls_in_json(&json).into_owned())
                    .unwrap_or_else(|| "not reported".into())
            );
            return Ok(ExitCode::FAILURE);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The node table, with the Ironic sync's state above it and each node's warning below.
fn format_node_list(list: &NodeList) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if let Some(sync) = &list.ironic {
        let _ = write!(
            out,
            "ironic sync: {}, {} nodes, last success {}",
            sync.state,
            sync.nodes,
            sync.last_success.as_deref().unwrap_or("never")
        );
        if let Some(e) = &sync.last_error {
            let _ = write!(
                out,
                "; last error ({}): {}",
                escape_controls(&e.kind),
                escape_controls(&e.message)
            );
        }
        out.push('\n');
        for note in &sync.notes {
            let _ = writeln!(out, "ironic sync note: {}", escape_controls(note));
        }
    }
    let _ = writeln!(
        out,
        "{:<36}  {:<20}  {:<7}  {:<12}  {:<36}  {:<19}  ADDRESSES",
        "UUID", "NAME", "SOURCE", "STATE", "INSTANCE", "LAST SEEN"
    );
    for n in &list.nodes {
        let state = match (n.leaving, &n.provision_state) {
            (true, _) => "leaving".to_string(),
            (false, Some(s)) => escape_controls(s).into_owned(),
            (false, None) => "-".to_string(),
        };
        let _ = writeln!(
            out,
            "{:<36}  {:<20}  {:<7}  {:<12}  {:<36}  {:<19}  {}",
            n.uuid,
            escape_controls(&n.name),
            n.source.as_str(),
            state,
            escape_controls(n.instance_uuid.as_deref().unwrap_or("-")),
            escape_controls(n.last_seen.as_deref().unwrap_or("never")),
            escape_controls(&n.addresses.join(","))
        );
    }
    for (n, warning) in list
        .nodes
        .iter()
        .filter_map(|n| Some((n, n.warning.as_deref()?)))
    {
        let _ = writeln!(
            out,
            "warning: node {}: {}",
            escape_controls(&n.name),
            escape_controls(warning)
        );
    }
    out
}

/// What `tether ctl status` prints, every string from the conductor with its control
/// characters escaped.
fn format_node_status(status: &NodeStatus) -> String {
    let mut out = format!(
        "node {} ({})  generation {}  last seen {}\n",
        escape_controls(&status.node_name),
        status.node_uuid,
        status.generation,
        escape_controls(status.last_seen.as_deref().unwrap_or("never"))
    );
    let Some(report) = &status.report else {
        out.push_str("no report from the agent yet\n");
        return out;
    };
    out.push_str(&format!(
        "agent {}  applied generation {}\n",
        escape_controls(&report.agent_version),
        report
            .generation
            .map(|g| g.to_string())
            .unwrap_or_else(|| "-".into())
    ));
    out.push_str(&crate::status::format_volumes(
        report,
        &status.unknown_targets,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::tests::{assert_inert, hostile_report};

    #[test]
    fn node_status_prints_remote_text_escaped() {
        let status = NodeStatus {
            node_uuid: Uuid::nil(),
            node_name: "n1\x1b]0;title\x07\rforged".into(),
            generation: 4,
            last_seen: Some("2026\r".into()),
            report: Some(hostile_report()),
            unknown_targets: vec![Uuid::nil()],
        };
        let printed = format_node_status(&status);
        // Node, agent, then header, volume, error, not-assigned note, foreign.
        assert_inert(&printed, 2 + 6);
        assert!(printed.contains("agent 0.1\\u{1b}]0;title"), "{printed}");
        assert!(
            printed.contains("is not assigned to this node"),
            "{printed}"
        );
    }
}

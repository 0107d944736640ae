//! The conductor against a real Keystone: password and application-credential clouds from
//! `clouds.yaml` authenticate, find Cinder in Keystone's catalog (in their region, on the public
//! interface, with the project id Keystone puts in the URL) and call it with a token Keystone
//! itself says is valid for user `tether` in project `baremetal`; wrong credentials are refused
//! as `cinder_auth_failed`; no credential and no token reaches the log, an answer or /metrics.
//!
//! Keystone is real (from PyPI, started by scripts/test-keystone, which passes it in
//! `TETHER_KEYSTONE_*`); only Cinder is stood in for, by a small server here that records the
//! tokens it is sent. Without that script the tests are ignored.

#[path = "../support/conductor_process.rs"]
mod conductor_process;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conductor_process::ConductorProcess;
use serde_json::{Value, json};

const IGNORED: &str = "needs a real Keystone: scripts/test-keystone";
const ADMIN: &str = "admin-token-for-the-keystone-tests-0123";
const NODE_TOKEN: &str = "node-token-for-the-keystone-tests-0123456789";
const WRONG_PASSWORD: &str = "wrong-password-never-shown-5d21";
const WRONG_SECRET: &str = "wrong-app-secret-never-shown-e7a0";

/// What scripts/test-keystone made in its Keystone.
struct Seeded {
    url: String,
    admin_password: String,
    project_id: String,
    user_id: String,
    password: String,
    app_cred_id: String,
    app_cred_secret: String,
    service_id: String,
}

impl Seeded {
    fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var(format!("TETHER_KEYSTONE_{name}"))
                .unwrap_or_else(|_| panic!("TETHER_KEYSTONE_{name} is not set: {IGNORED}"))
        };
        Self {
            url: var("URL").trim_end_matches('/').to_string(),
            admin_password: var("ADMIN_PASSWORD"),
            project_id: var("PROJECT_ID"),
            user_id: var("USER_ID"),
            password: var("PASSWORD"),
            app_cred_id: var("APP_CRED_ID"),
            app_cred_secret: var("APP_CRED_SECRET"),
            service_id: var("SERVICE_ID"),
        }
    }
}

/// Keystone's REST API, as its admin.
struct Keystone {
    http: reqwest::Client,
    seeded: Seeded,
    admin_token: String,
}

impl Keystone {
    async fn connect() -> Self {
        let seeded = Seeded::from_env();
        let http = reqwest::Client::new();
        let auth = json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": "admin", "domain": {"id": "default"}, "password": seeded.admin_password}}},
            "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}});
        let answer = http
            .post(format!("{}/auth/tokens", seeded.url))
            .json(&auth)
            .send()
            .await
            .expect("Keystone answers");
        assert_eq!(answer.status().as_u16(), 201, "the admin logs in");
        let admin_token = answer.headers()["x-subject-token"]
            .to_str()
            .unwrap()
            .to_string();
        Self {
            http,
            seeded,
            admin_token,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.seeded.url))
            .header("X-Auth-Token", &self.admin_token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer = request.send().await.unwrap();
        let status = answer.status();
        let text = answer.text().await.unwrap();
        assert!(status.is_success(), "{method} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// A region of its own with Cinder's endpoint `url` (public), so that tests running at the
    /// same time do not see each other's endpoints.
    async fn region_with_cinder(&self, region: &str, endpoints: &[(&str, String)]) {
        self.call(
            reqwest::Method::POST,
            "/regions",
            Some(json!({"region": {"id": region}})),
        )
        .await;
        for (interface, url) in endpoints {
            self.call(
                reqwest::Method::POST,
                "/endpoints",
                Some(json!({"endpoint": {"service_id": self.seeded.service_id,
                    "interface": interface, "region_id": region, "url": url}})),
            )
            .await;
        }
    }

    /// A new application credential of user `tether` (made with its own token, as only a user
    /// can): its id and secret.
    async fn new_app_credential(&self, name: &str) -> (String, String) {
        let seeded = &self.seeded;
        let login = json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "id": seeded.user_id, "password": seeded.password}}},
            "scope": {"project": {"id": seeded.project_id}}}});
        let answer = self
            .http
            .post(format!("{}/auth/tokens", seeded.url))
            .json(&login)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 201, "tether logs in");
        let own = answer.headers()["x-subject-token"]
            .to_str()
            .unwrap()
            .to_string();
        let answer = self
            .http
            .post(format!(
                "{}/users/{}/application_credentials",
                seeded.url, seeded.user_id
            ))
            .header("X-Auth-Token", own)
            .json(&json!({"application_credential": {"name": name, "roles": [{"name": "member"}]}}))
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        let body: Value = answer.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 201, "application credential {name}: {body}");
        let credential = &body["application_credential"];
        (
            credential["id"].as_str().unwrap().to_string(),
            credential["secret"].as_str().unwrap().to_string(),
        )
    }

    /// Deletes an application credential of `tether`: Keystone revokes its tokens.
    async fn delete_app_credential(&self, id: &str) {
        let path = format!(
            "/users/{}/application_credentials/{id}",
            self.seeded.user_id
        );
        let answer = self
            .http
            .delete(format!("{}{path}", self.seeded.url))
            .header("X-Auth-Token", &self.admin_token)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 204, "DELETE {path}");
    }

    /// What Keystone says about a token: 200 and its body, or the refusal's status.
    async fn validate(&self, token: &str) -> (u16, Value) {
        let answer = self
            .http
            .get(format!("{}/auth/tokens", self.seeded.url))
            .header("X-Auth-Token", &self.admin_token)
            .header("X-Subject-Token", token)
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        (status, answer.json().await.unwrap_or(Value::Null))
    }
}

/// One request the stand-in for Cinder received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path_and_query: String,
    token: Option<String>,
}

/// Stands in for Cinder, on loopback: no volume exists. Records every request, and answers
/// 401 to a token Keystone does not vouch for (as keystonemiddleware makes Cinder do).
struct StandIn {
    root: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl StandIn {
    async fn start(keystone: &Keystone) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let validator = Arc::new(Keystone {
            http: keystone.http.clone(),
            seeded: Seeded::from_env(),
            admin_token: keystone.admin_token.clone(),
        });
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let record = record.clone();
            let validator = validator.clone();
            async move {
                let token = request.headers().get("x-auth-token").cloned();
                let valid = match token.as_ref().and_then(|t| t.to_str().ok()) {
                    Some(token) => validator.validate(token).await.0 == 200,
                    None => false,
                };
                cinder_answer(&record, request, valid)
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let root = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { root, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn cinder_answer(
    record: &Mutex<Vec<Seen>>,
    request: axum::extract::Request,
    token_valid: bool,
) -> (axum::http::StatusCode, axum::Json<Value>) {
    let uri = request.uri();
    let path = uri.path().to_string();
    record.lock().unwrap().push(Seen {
        method: request.method().to_string(),
        path_and_query: uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or(path.clone()),
        token: request
            .headers()
            .get("x-auth-token")
            .map(|t| t.to_str().unwrap().to_string()),
    });
    if !token_valid {
        return (
            axum::http::StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": {"code": 401,
                "message": "The request you have made requires authentication."}})),
        );
    }
    let not_found = axum::http::StatusCode::NOT_FOUND;
    if request.method() != axum::http::Method::GET {
        return (not_found, axum::Json(json!({})));
    }
    if path.ends_with("/volumes/detail") {
        return (
            axum::http::StatusCode::OK,
            axum::Json(json!({"volumes": []})),
        );
    }
    match path.rsplit_once("/volumes/") {
        Some((_, id)) => (
            not_found,
            axum::Json(json!({"itemNotFound": {"code": 404,
                "message": format!("Volume {id} could not be found.")}})),
        ),
        None => (not_found, axum::Json(json!({}))),
    }
}

/// A conductor with `[cinder] cloud = CLOUD`, its home in `home` (where osauth finds
/// `.config/openstack/clouds.yaml`), logging at trace level for every crate (osauth, reqwest
/// and hyper included).
fn conductor(home: &Path, cloud: &str) -> ConductorProcess {
    let config = format!("\n[cinder]\ncloud = \"{cloud}\"\n");
    ConductorProcess::start(home, cloud, &config, ADMIN, "trace", "TETHER_KEYSTONE_LOGS")
}

/// The conductor's operator API, and every body it answered (searched for secrets at the end).
struct Operator {
    http: reqwest::Client,
    url: String,
    answers: Vec<String>,
}

impl Operator {
    async fn new(url: &str) -> Self {
        let op = Self {
            http: reqwest::Client::new(),
            url: url.to_string(),
            answers: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while op.http.get(format!("{url}/v1")).send().await.is_err() {
            assert!(Instant::now() < deadline, "the conductor did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        op
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let answer = request.send().await.expect("the conductor answers");
        let status = answer.status().as_u16();
        let text = answer.text().await.unwrap();
        self.answers.push(text.clone());
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn admin(&mut self, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        let request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(ADMIN)
            .json(&body);
        self.send(request).await
    }

    /// A node whose agent has reported once, so that its connector is known.
    async fn reported_node(&mut self, name: &str, mac: &str) {
        let (status, body) = self
            .admin(
                reqwest::Method::POST,
                "/v1/nodes",
                json!({"name": name, "addresses": [mac], "agent_token": NODE_TOKEN}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let uuid = body["uuid"].as_str().unwrap().to_string();
        let beat = self
            .http
            .post(format!("{}/v1/heartbeat/{uuid}", self.url))
            .bearer_auth(NODE_TOKEN)
            .json(
                &json!({"agent_version": "0.1.0", "generation": null, "connectors":
                [{"type": "iqn", "connector_id": "iqn.1993-08.org.debian:01:keystone"}]}),
            );
        let (status, body) = self.send(beat).await;
        assert_eq!(status, 202, "{body}");
    }

    /// Asks for `volume` on `node`: the error kind it is refused with.
    async fn attach_refused(&mut self, node: &str, volume: &str, status: u16) -> String {
        let (got, body) = self
            .admin(
                reqwest::Method::POST,
                &format!("/v1/nodes/{node}/volumes"),
                json!({"volume": volume}),
            )
            .await;
        assert_eq!(got, status, "{body}");
        body["error"]["kind"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    async fn metrics(&mut self) -> String {
        let request = self.http.get(format!("{}/metrics", self.url));
        let (status, _) = self.send(request).await;
        assert_eq!(status, 200);
        self.answers.last().unwrap().clone()
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Method {
    Password,
    ApplicationCredential,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Self::Password => "password",
            Self::ApplicationCredential => "application_credential",
        }
    }

    /// A cloud of clouds.yaml, authenticating at `auth_url` with this method.
    fn cloud(
        self,
        name: &str,
        seeded: &Seeded,
        auth_url: &str,
        region: &str,
        right: bool,
    ) -> String {
        let auth = match self {
            Self::Password => format!(
                "    auth:\n      auth_url: {auth_url}\n      username: tether\n      \
                 password: {}\n      project_name: baremetal\n      \
                 user_domain_name: Default\n      project_domain_name: Default\n",
                if right {
                    &seeded.password
                } else {
                    WRONG_PASSWORD
                }
            ),
            Self::ApplicationCredential => {
                let secret = if right {
                    &seeded.app_cred_secret
                } else {
                    WRONG_SECRET
                };
                return app_credential_cloud(name, auth_url, region, &seeded.app_cred_id, secret);
            }
        };
        format!("  {name}:\n    region_name: {region}\n{auth}")
    }
}

fn app_credential_cloud(
    name: &str,
    auth_url: &str,
    region: &str,
    id: &str,
    secret: &str,
) -> String {
    format!(
        "  {name}:\n    region_name: {region}\n    auth_type: v3applicationcredential\n    \
         auth:\n      auth_url: {auth_url}\n      application_credential_id: {id}\n      \
         application_credential_secret: {secret}\n"
    )
}

/// Everything a run showed outside: the log, the answers (metrics included).
struct Shown {
    what: String,
    text: String,
}

fn assert_nothing_secret(shown: &[Shown], secrets: &[&str]) {
    for s in shown {
        for secret in secrets {
            assert!(
                !s.text.contains(secret),
                "{} shows a credential or a token ({}…): {}",
                s.what,
                &secret[..6.min(secret.len())],
                s.text
            );
        }
    }
}

/// One authentication method, end to end: right credentials reach the stand-in for Cinder
/// with a token Keystone vouches for; wrong ones are refused; nothing secret is shown.
async fn scenario(method: Method) {
    let keystone = Keystone::connect().await;
    let seeded = &keystone.seeded;
    let cinder = StandIn::start(&keystone).await;
    let root = &cinder.root;
    let region = format!("tether-{}-{}", method.name(), std::process::id());
    // Keystone substitutes the project id, as real clouds register Cinder. The internal
    // endpoint and the other region's are decoys that must not be called.
    keystone
        .region_with_cinder(
            &format!("{region}-decoy"),
            &[("public", format!("{root}/decoy/%(project_id)s"))],
        )
        .await;
    keystone
        .region_with_cinder(
            &region,
            &[
                ("internal", format!("{root}/internal/%(project_id)s")),
                ("public", format!("{root}/v3/%(project_id)s")),
            ],
        )
        .await;

    let home = tempfile::tempdir().unwrap();
    let unversioned = seeded.url.trim_end_matches("/v3");
    let mut clouds = String::from("clouds:\n");
    clouds += &method.cloud("right", seeded, &seeded.url, &region, true);
    clouds += &method.cloud("unversioned", seeded, unversioned, &region, true);
    clouds += &method.cloud("wrong", seeded, &seeded.url, &region, false);
    let dir = home.path().join(".config/openstack");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("clouds.yaml"), clouds).unwrap();

    let mut shown = Vec::new();
    let volume_id = uuid::Uuid::new_v4().to_string();
    for cloud in ["right", "unversioned"] {
        let conductor = conductor(home.path(), cloud);
        let mut op = Operator::new(&conductor.url).await;
        op.reported_node("n1", "52:54:00:00:0b:01").await;
        // By id (GET volumes/{id}, then by name), and by name (GET volumes/detail?name=).
        for volume in [volume_id.as_str(), "db-data"] {
            let kind = op.attach_refused("n1", volume, 404).await;
            assert_eq!(
                kind,
                "volume_not_found",
                "{cloud}: {}",
                op.answers.last().unwrap()
            );
        }
        let metrics = op.metrics().await;
        let log = conductor.stop();
        shown.push(Shown {
            what: format!("{cloud}: the log"),
            text: log.clone(),
        });
        shown.push(Shown {
            what: format!("{cloud}: the answers"),
            text: op.answers.join("\n"),
        });
        assert!(
            log.contains(&format!("{root}/v3/{}/", seeded.project_id)),
            "{cloud}: the log names the endpoint Keystone's catalog gave: {log}"
        );
        assert!(metrics.contains("tether_"), "{metrics}");
    }

    // Cinder was called on the public endpoint of the region, with the project in the path.
    let seen = cinder.seen();
    let volumes = format!("/v3/{}/volumes", seeded.project_id);
    let expected = [
        format!("{volumes}/{volume_id}"),
        format!("{volumes}/detail?name={volume_id}"),
        format!("{volumes}/detail?name=db-data"),
    ];
    let calls: Vec<String> = seen
        .iter()
        .map(|s| format!("{} {}", s.method, s.path_and_query))
        .collect();
    let once: Vec<String> = expected.iter().map(|p| format!("GET {p}")).collect();
    assert_eq!(calls, [once.clone(), once].concat(), "{seen:#?}");

    // Keystone vouches for every token the stand-in received: user tether, project baremetal,
    // the method asked for.
    let mut tokens: Vec<String> = seen.iter().map(|s| s.token.clone().unwrap()).collect();
    tokens.dedup();
    assert_eq!(tokens.len(), 2, "one token per conductor: {tokens:?}");
    for token in &tokens {
        let (status, body) = keystone.validate(token).await;
        assert_eq!(status, 200, "Keystone knows the token: {body}");
        let t = &body["token"];
        assert_eq!(t["user"]["id"], seeded.user_id.as_str(), "{body}");
        assert_eq!(t["user"]["name"], "tether", "{body}");
        assert_eq!(t["project"]["id"], seeded.project_id.as_str(), "{body}");
        assert_eq!(t["project"]["name"], "baremetal", "{body}");
        assert_eq!(t["methods"], json!([method.name()]), "{body}");
        let roles: Vec<&str> = t["roles"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["name"].as_str())
            .collect();
        assert!(roles.contains(&"member"), "{body}");
        if method == Method::ApplicationCredential {
            assert_eq!(
                t["application_credential"]["id"],
                seeded.app_cred_id.as_str(),
                "{body}"
            );
        }
    }

    // Wrong credentials: refused by Keystone, so Cinder is never called.
    let conductor = conductor(home.path(), "wrong");
    let mut op = Operator::new(&conductor.url).await;
    op.reported_node("n1", "52:54:00:00:0b:01").await;
    let kind = op.attach_refused("n1", "db-data", 502).await;
    assert_eq!(kind, "cinder_auth_failed", "{}", op.answers.last().unwrap());
    let (status, volumes) = op
        .admin(reqwest::Method::GET, "/v1/volumes", Value::Null)
        .await;
    assert_eq!(
        (status, &volumes["volumes"]),
        (200, &json!([])),
        "nothing recorded"
    );
    op.metrics().await;
    let log = conductor.stop();
    assert_eq!(cinder.seen().len(), seen.len(), "Cinder was not called");
    shown.push(Shown {
        what: "wrong: the log".into(),
        text: log,
    });
    shown.push(Shown {
        what: "wrong: the answers".into(),
        text: op.answers.join("\n"),
    });

    let mut secrets = vec![
        seeded.password.as_str(),
        seeded.app_cred_secret.as_str(),
        seeded.admin_password.as_str(),
        keystone.admin_token.as_str(),
        WRONG_PASSWORD,
        WRONG_SECRET,
    ];
    secrets.extend(tokens.iter().map(String::as_str));
    assert_nothing_secret(&shown, &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real Keystone: scripts/test-keystone"]
async fn password_auth_finds_cinder_in_keystones_catalog_and_shows_no_secret() {
    scenario(Method::Password).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real Keystone: scripts/test-keystone"]
async fn application_credential_auth_finds_cinder_in_keystones_catalog_and_shows_no_secret() {
    scenario(Method::ApplicationCredential).await;
}

/// The application credential in clouds.yaml replaced and the old one deleted (so Keystone
/// revokes the conductor's token), with the conductor running: the next operator request
/// reaches Cinder with a token of the new credential, without a restart and without a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real Keystone: scripts/test-keystone"]
async fn a_rotated_application_credential_is_used_without_a_restart() {
    let keystone = Keystone::connect().await;
    let seeded = &keystone.seeded;
    let cinder = StandIn::start(&keystone).await;
    let region = format!("tether-rotation-{}", std::process::id());
    let public = format!("{}/v3/%(project_id)s", cinder.root);
    keystone
        .region_with_cinder(&region, &[("public", public)])
        .await;
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join(".config/openstack");
    std::fs::create_dir_all(&dir).unwrap();
    let write_clouds = |id: &str, secret: &str| {
        let cloud = app_credential_cloud("rotating", &seeded.url, &region, id, secret);
        std::fs::write(dir.join("clouds.yaml"), format!("clouds:\n{cloud}")).unwrap();
    };

    let (old_id, old_secret) = keystone.new_app_credential("tether-before").await;
    write_clouds(&old_id, &old_secret);
    let conductor = conductor(home.path(), "rotating");
    let mut op = Operator::new(&conductor.url).await;
    op.reported_node("n1", "52:54:00:00:0b:02").await;
    let kind = op.attach_refused("n1", "db-data", 404).await;
    assert_eq!(kind, "volume_not_found", "{}", op.answers.last().unwrap());
    let old_token = cinder.seen().last().unwrap().token.clone().unwrap();
    assert_eq!(keystone.validate(&old_token).await.0, 200);

    let (new_id, new_secret) = keystone.new_app_credential("tether-after").await;
    write_clouds(&new_id, &new_secret);
    keystone.delete_app_credential(&old_id).await;
    assert_eq!(
        keystone.validate(&old_token).await.0,
        404,
        "Keystone revoked the old credential's token"
    );

    // Not a cinder_auth_failed: the conductor logs in again with what clouds.yaml says now.
    let kind = op.attach_refused("n1", "db-data", 404).await;
    assert_eq!(kind, "volume_not_found", "{}", op.answers.last().unwrap());
    let seen = cinder.seen();
    let new_token = seen.last().unwrap().token.clone().unwrap();
    let (status, body) = keystone.validate(&new_token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["token"]["application_credential"]["id"],
        new_id.as_str(),
        "{body}"
    );
    op.metrics().await;
    let log = conductor.stop();
    assert!(
        log.contains("logging in again"),
        "the log says why it logged in again: {log}"
    );
    let shown = [
        Shown {
            what: "the log".into(),
            text: log,
        },
        Shown {
            what: "the answers".into(),
            text: op.answers.join("\n"),
        },
    ];
    let secrets = [
        old_secret.as_str(),
        new_secret.as_str(),
        old_token.as_str(),
        new_token.as_str(),
        keystone.admin_token.as_str(),
    ];
    assert_nothing_secret(&shown, &secrets);
}

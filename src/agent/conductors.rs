//! Which conductor the agent talks to. Pure: no I/O, no clock; times and jitter are passed in.
//!
//! The configured URLs, in order; a URL whose host is a name is one conductor per address the
//! name resolves to (the name kept for TLS). The agent stays on the conductor that answers and
//! moves to the next one only when the current one fails in a way another conductor may not
//! ([`is_failover_reason`]), after a jittered delay that grows with each full round of failures.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use reqwest::Url;

use super::client::ClientError;

/// How often names are resolved again while the conductor in use answers.
pub(crate) const RESOLVE_EVERY: Duration = Duration::from_secs(300);
/// The delay before trying the next conductor, doubled after each full round of failures.
const HOP_INITIAL: Duration = Duration::from_millis(500);
const HOP_MAX: Duration = Duration::from_secs(30);

/// Resolves a conductor's host name; the system's resolver in production, a fixed table in
/// tests (no test may change /etc/hosts).
pub trait Resolve: Send + Sync {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>>;
}

/// getaddrinfo, through tokio's blocking pool.
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// Whether an error from one conductor is a reason to try another: it cannot be reached (refused,
/// timed out, TLS failed), it is failing (5xx: its database busy or gone), or its answer is not
/// the protocol. An answer about the request or the node (401, 403, 404, another 4xx) would be
/// the same from every conductor of one database: moving would only spread the problem.
pub(crate) fn is_failover_reason(e: &ClientError) -> bool {
    match e {
        ClientError::Unreachable { .. } | ClientError::Protocol(_) => true,
        ClientError::Refused { status, .. } => *status >= 500,
        ClientError::Unauthorized | ClientError::UnknownNode(_) | ClientError::Moved => false,
    }
}

/// One conductor: a configured URL, and the address its name resolved to (none for an address
/// in the URL, or a name not resolved yet: the HTTP client resolves it then).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Endpoint {
    /// The configured base URL, without a trailing slash; requests go to it.
    pub(crate) url: String,
    /// The URL without user or password, for logs, metrics and the status file.
    pub(crate) shown: String,
    /// The host name and the address it resolved to, connected to instead of resolving again.
    pub(crate) pinned: Option<(String, SocketAddr)>,
}

impl Endpoint {
    pub(crate) fn address(&self) -> Option<String> {
        self.pinned.as_ref().map(|(_, a)| a.ip().to_string())
    }

    /// `https://c.example:6387 (192.0.2.1)`.
    pub(crate) fn label(&self) -> String {
        match self.address() {
            Some(address) => format!("{} ({address})", self.shown),
            None => self.shown.clone(),
        }
    }
}

/// A configured URL and what its host is.
#[derive(Debug, Clone)]
struct Configured {
    url: String,
    shown: String,
    /// The host name and port to resolve; none when the URL names an address.
    name: Option<(String, u16)>,
}

/// A move to another conductor, for the log.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Hop {
    pub(crate) from: Endpoint,
    pub(crate) to: Endpoint,
    /// How long to wait before asking `to`.
    pub(crate) delay: Duration,
}

#[derive(Debug)]
pub(crate) struct Selector {
    configured: Vec<Configured>,
    endpoints: Vec<Endpoint>,
    current: usize,
    /// Bumped at every change of the current endpoint: a result from an earlier one is stale.
    epoch: u64,
    /// Failures in a row, across conductors, since the last answer.
    failures: u32,
    /// No request before this, after a hop.
    not_before: Option<Instant>,
    /// Whether the current endpoint has answered since it was chosen.
    confirmed: bool,
    resolved_at: Option<Instant>,
    /// A full round failed: resolve again before the next, the addresses may have moved.
    resolve_now: bool,
    failovers: u64,
}

impl Selector {
    /// An error names the URL that is not http(s).
    pub(crate) fn new(urls: &[String]) -> Result<Self, String> {
        let mut configured = Vec::new();
        for url in urls {
            let parsed = Url::parse(url).map_err(|e| format!("conductor URL {url:?}: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(format!("conductor URL {url:?} is not http:// or https://"));
            }
            let Some(host) = parsed.host_str() else {
                return Err(format!("conductor URL {url:?} names no host"));
            };
            let is_address = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok();
            let port = parsed.port_or_known_default().unwrap_or(443);
            let name = (!is_address).then(|| (host.to_string(), port));
            let mut shown = parsed.clone();
            let _ = shown.set_username("");
            let _ = shown.set_password(None);
            configured.push(Configured {
                url: url.trim_end_matches('/').to_string(),
                shown: shown.as_str().trim_end_matches('/').to_string(),
                name,
            });
        }
        if configured.is_empty() {
            return Err("no conductor URL".into());
        }
        let endpoints = configured.iter().map(unresolved).collect();
        Ok(Self {
            configured,
            endpoints,
            current: 0,
            epoch: 0,
            failures: 0,
            not_before: None,
            confirmed: false,
            resolved_at: None,
            resolve_now: false,
            failovers: 0,
        })
    }

    pub(crate) fn current(&self) -> (u64, &Endpoint) {
        (self.epoch, &self.endpoints[self.current])
    }

    #[cfg(test)]
    pub(crate) fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The configured URLs as shown (without credentials).
    pub(crate) fn configured(&self) -> Vec<String> {
        self.configured.iter().map(|c| c.shown.clone()).collect()
    }

    #[cfg(test)]
    pub(crate) fn failovers(&self) -> u64 {
        self.failovers
    }

    /// How long to wait before the next request, after a hop.
    pub(crate) fn wait(&self, now: Instant) -> Option<Duration> {
        self.not_before
            .and_then(|at| at.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    /// The names to resolve now: at first, every [`RESOLVE_EVERY`], and after a full round of
    /// failures.
    pub(crate) fn names_to_resolve(&self, now: Instant) -> Vec<(String, u16)> {
        let due = self.resolve_now
            || self
                .resolved_at
                .is_none_or(|at| now.saturating_duration_since(at) >= RESOLVE_EVERY);
        if !due {
            return Vec::new();
        }
        let mut names: Vec<(String, u16)> = Vec::new();
        for name in self.configured.iter().filter_map(|c| c.name.clone()) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }

    /// Takes what the names resolved to. A name that failed or resolved to nothing keeps its
    /// earlier addresses. The current endpoint stays current while it is still listed; if its
    /// address is gone from the name, the agent moves (returned, for the log).
    pub(crate) fn resolved(
        &mut self,
        now: Instant,
        answers: &HashMap<(String, u16), std::io::Result<Vec<SocketAddr>>>,
    ) -> Option<Hop> {
        self.resolved_at = Some(now);
        self.resolve_now = false;
        let mut endpoints: Vec<Endpoint> = Vec::new();
        for c in &self.configured {
            let found = c
                .name
                .as_ref()
                .and_then(|name| answers.get(name))
                .and_then(|a| a.as_ref().ok())
                .filter(|addrs| !addrs.is_empty());
            let expanded: Vec<Endpoint> = match (&c.name, found) {
                (Some((host, port)), Some(addrs)) => addrs
                    .iter()
                    .map(|a| Endpoint {
                        url: c.url.clone(),
                        shown: c.shown.clone(),
                        pinned: Some((host.clone(), SocketAddr::new(a.ip(), *port))),
                    })
                    .collect(),
                _ => {
                    let earlier: Vec<Endpoint> = self
                        .endpoints
                        .iter()
                        .filter(|e| e.url == c.url)
                        .cloned()
                        .collect();
                    match earlier.is_empty() {
                        true => vec![unresolved(c)],
                        false => earlier,
                    }
                }
            };
            for e in expanded {
                if !endpoints.contains(&e) {
                    endpoints.push(e);
                }
            }
        }
        let before = self.endpoints[self.current].clone();
        self.endpoints = endpoints;
        if let Some(same) = self.endpoints.iter().position(|e| *e == before) {
            self.current = same;
            return None;
        }
        // Gone from the name (or first resolved): the first address of the same URL.
        self.current = self
            .endpoints
            .iter()
            .position(|e| e.url == before.url)
            .unwrap_or(0);
        self.epoch += 1;
        self.confirmed = false;
        let to = self.endpoints[self.current].clone();
        let first_resolution = before.pinned.is_none() && before.url == to.url;
        (!first_resolution).then_some(Hop {
            from: before,
            to,
            delay: Duration::ZERO,
        })
    }

    /// The endpoint of `epoch` answered. True the first time it does since it was chosen (for
    /// the log: once per change).
    pub(crate) fn succeeded(&mut self, epoch: u64) -> bool {
        if epoch != self.epoch {
            return false;
        }
        self.failures = 0;
        self.not_before = None;
        !std::mem::replace(&mut self.confirmed, true)
    }

    /// The endpoint of `epoch` failed with a fail-over reason: the next one, after a delay that
    /// grows with each full round of failures (`jitter` in 0.5..=1). None when a request to it
    /// already moved the agent, or when there is only one (its callers' own backoff applies).
    pub(crate) fn failed(&mut self, epoch: u64, now: Instant, jitter: f64) -> Option<Hop> {
        if epoch != self.epoch {
            return None;
        }
        let n = self.endpoints.len() as u32;
        self.failures += 1;
        if self.failures.is_multiple_of(n) {
            self.resolve_now = true;
        }
        if n < 2 {
            return None;
        }
        let rounds = (self.failures - 1) / n;
        let delay = HOP_INITIAL
            .saturating_mul(1u32 << rounds.min(16))
            .min(HOP_MAX)
            .mul_f64(jitter.clamp(0.5, 1.0));
        let from = self.endpoints[self.current].clone();
        self.current = (self.current + 1) % self.endpoints.len();
        self.epoch += 1;
        self.failovers += 1;
        self.confirmed = false;
        self.not_before = Some(now + delay);
        Some(Hop {
            from,
            to: self.endpoints[self.current].clone(),
            delay,
        })
    }
}

fn unresolved(c: &Configured) -> Endpoint {
    Endpoint {
        url: c.url.clone(),
        shown: c.shown.clone(),
        pinned: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn unreachable() -> ClientError {
        ClientError::Unreachable {
            url: "u".into(),
            reason: "connection refused".into(),
        }
    }

    fn refused(status: u16, kind: &str) -> ClientError {
        ClientError::Refused {
            status,
            kind: kind.into(),
            message: String::new(),
        }
    }

    #[test]
    fn only_failures_another_conductor_may_not_have_move_the_agent() {
        assert!(is_failover_reason(&unreachable()));
        assert!(is_failover_reason(&refused(503, "database_busy")));
        assert!(is_failover_reason(&refused(500, "internal")));
        assert!(is_failover_reason(&refused(502, "unknown")));
        assert!(is_failover_reason(&ClientError::Protocol("html".into())));
        assert!(!is_failover_reason(&ClientError::Unauthorized));
        assert!(!is_failover_reason(&ClientError::UnknownNode("n".into())));
        assert!(!is_failover_reason(&refused(403, "forbidden")));
        assert!(!is_failover_reason(&refused(400, "invalid_request")));
        assert!(!is_failover_reason(&refused(429, "rate_limited")));
        assert!(!is_failover_reason(&ClientError::Moved));
    }

    #[test]
    fn urls_must_be_http_and_are_shown_without_credentials() {
        assert!(Selector::new(&urls(&["ftp://a"])).is_err());
        assert!(Selector::new(&[]).is_err());
        let s = Selector::new(&urls(&["https://user:pw@a.example:6387/"])).unwrap();
        let (_, e) = s.current();
        assert_eq!(e.url, "https://user:pw@a.example:6387");
        assert_eq!(e.label(), "https://a.example:6387");
        assert!(!format!("{:?}", s.configured()).contains("pw"));
    }

    #[test]
    fn the_agent_stays_on_a_conductor_that_answers() {
        let mut s = Selector::new(&urls(&["https://10.0.0.1", "https://10.0.0.2"])).unwrap();
        let now = Instant::now();
        for _ in 0..100 {
            let (epoch, e) = s.current();
            assert_eq!(e.url, "https://10.0.0.1");
            s.succeeded(epoch);
        }
        assert_eq!(s.failovers(), 0);
        assert_eq!(s.wait(now), None);
    }

    #[test]
    fn a_failure_moves_to_the_next_once_with_a_growing_jittered_delay() {
        let list = ["https://10.0.0.1", "https://10.0.0.2", "https://10.0.0.3"];
        let mut s = Selector::new(&urls(&list)).unwrap();
        let now = Instant::now();
        let (epoch, _) = s.current();
        let hop = s.failed(epoch, now, 1.0).unwrap();
        assert_eq!(
            (hop.from.url.as_str(), hop.to.url.as_str()),
            (list[0], list[1])
        );
        assert_eq!(hop.delay, Duration::from_millis(500));
        assert_eq!(s.wait(now), Some(Duration::from_millis(500)));
        assert_eq!(s.wait(now + Duration::from_secs(1)), None);
        // The heartbeat that was in flight to the first fails too: no second hop.
        assert_eq!(s.failed(epoch, now, 1.0), None);
        assert_eq!(s.current().1.url, list[1]);
        // The first round is quick; each later round doubles, jittered, up to 30 s.
        let mut delays = vec![hop.delay];
        for _ in 0..20 {
            let (epoch, _) = s.current();
            delays.push(s.failed(epoch, now, 1.0).unwrap().delay);
        }
        let ms: Vec<u128> = delays.iter().map(|d| d.as_millis()).collect();
        assert_eq!(
            &ms[..9],
            [500, 500, 500, 1000, 1000, 1000, 2000, 2000, 2000]
        );
        assert_eq!(ms[20], 30_000);
        let (epoch, _) = s.current();
        let jittered = s.failed(epoch, now, 0.5).unwrap().delay;
        assert_eq!(jittered, Duration::from_secs(15));
        assert_eq!(s.failovers(), 22);
        // An answer ends the backoff: the next failure hops quickly again.
        let (epoch, _) = s.current();
        assert!(s.succeeded(epoch), "first answer after a change");
        assert!(!s.succeeded(epoch), "said once per change");
        assert_eq!(s.wait(now), None);
        let (epoch, _) = s.current();
        assert_eq!(
            s.failed(epoch, now, 1.0).unwrap().delay,
            Duration::from_millis(500)
        );
    }

    #[test]
    fn one_conductor_is_never_left() {
        let mut s = Selector::new(&urls(&["https://10.0.0.1"])).unwrap();
        let (epoch, _) = s.current();
        assert_eq!(s.failed(epoch, Instant::now(), 1.0), None);
        assert_eq!(s.current().0, epoch);
        assert_eq!(s.wait(Instant::now()), None);
        // A name is resolved again after each failure, as the HTTP client would on its own:
        // the conductor may have moved.
        let mut s = Selector::new(&urls(&["https://c.example"])).unwrap();
        let t0 = Instant::now();
        s.resolved(t0, &answers(&[("c.example", 443, Ok(vec!["10.0.0.1"]))]));
        assert!(s.names_to_resolve(t0).is_empty());
        let (epoch, _) = s.current();
        assert_eq!(s.failed(epoch, t0, 1.0), None);
        assert_eq!(s.names_to_resolve(t0).len(), 1);
        let moved = answers(&[("c.example", 443, Ok(vec!["10.0.0.7"]))]);
        let hop = s.resolved(t0, &moved).unwrap();
        assert_eq!(hop.to.address().as_deref(), Some("10.0.0.7"));
    }

    fn answers(
        list: &[(&str, u16, std::io::Result<Vec<&str>>)],
    ) -> HashMap<(String, u16), std::io::Result<Vec<SocketAddr>>> {
        list.iter()
            .map(|(host, port, found)| {
                let found = match found {
                    Ok(ips) => Ok(ips
                        .iter()
                        .map(|ip| SocketAddr::new(ip.parse().unwrap(), *port))
                        .collect()),
                    Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                };
                ((host.to_string(), *port), found)
            })
            .collect()
    }

    #[test]
    fn a_name_with_several_addresses_is_several_conductors() {
        let mut s =
            Selector::new(&urls(&["https://c.example:6387", "https://10.0.0.9:6387"])).unwrap();
        let t0 = Instant::now();
        assert_eq!(
            s.names_to_resolve(t0),
            [("c.example".to_string(), 6387)],
            "addresses are not resolved"
        );
        let two = answers(&[("c.example", 6387, Ok(vec!["127.0.0.1", "127.0.0.2"]))]);
        assert_eq!(
            s.resolved(t0, &two),
            None,
            "the first resolution is no move"
        );
        let labels: Vec<String> = s.endpoints().iter().map(Endpoint::label).collect();
        assert_eq!(
            labels,
            [
                "https://c.example:6387 (127.0.0.1)",
                "https://c.example:6387 (127.0.0.2)",
                "https://10.0.0.9:6387"
            ]
        );
        let (_, e) = s.current();
        assert_eq!(
            e.pinned,
            Some(("c.example".into(), "127.0.0.1:6387".parse().unwrap()))
        );
        // Not again until RESOLVE_EVERY, unless a full round fails.
        assert!(s.names_to_resolve(t0 + Duration::from_secs(10)).is_empty());
        assert_eq!(s.names_to_resolve(t0 + RESOLVE_EVERY).len(), 1);
        for _ in 0..3 {
            let (epoch, _) = s.current();
            s.failed(epoch, t0, 1.0);
        }
        assert_eq!(s.names_to_resolve(t0).len(), 1, "after a full round");
    }

    #[test]
    fn resolving_again_keeps_the_conductor_in_use_while_it_is_listed() {
        let mut s = Selector::new(&urls(&["https://c.example"])).unwrap();
        let t0 = Instant::now();
        s.resolved(
            t0,
            &answers(&[("c.example", 443, Ok(vec!["10.0.0.1", "10.0.0.2"]))]),
        );
        let (epoch, _) = s.current();
        s.failed(epoch, t0, 1.0).unwrap();
        let (epoch, e) = s.current();
        let e = e.clone();
        assert_eq!(e.address().as_deref(), Some("10.0.0.2"));
        // Reordered, with one more: still on .2.
        let more = answers(&[(
            "c.example",
            443,
            Ok(vec!["10.0.0.3", "10.0.0.2", "10.0.0.1"]),
        )]);
        assert_eq!(s.resolved(t0, &more), None);
        assert_eq!(s.current(), (epoch, &e));
        // A failed lookup keeps what was known.
        let failed = answers(&[("c.example", 443, Err(std::io::Error::other("no answer")))]);
        assert_eq!(s.resolved(t0, &failed), None);
        assert_eq!(s.endpoints().len(), 3);
        // .2 gone from the name: move, logged.
        let gone = answers(&[("c.example", 443, Ok(vec!["10.0.0.4"]))]);
        let hop = s.resolved(t0, &gone).unwrap();
        assert_eq!(hop.from.address().as_deref(), Some("10.0.0.2"));
        assert_eq!(hop.to.address().as_deref(), Some("10.0.0.4"));
        assert_ne!(s.current().0, epoch, "results from .2 are stale now");
        assert_eq!(s.failovers(), 1, "a move by DNS is not a failure");
    }
}

//! How often one client address may look nodes up or fail to authenticate: a GCRA (a token
//! bucket kept as one time per client) over a bounded table.
//!
//! Clients are keyed by IPv4 address, and by /64 for IPv6 (what one host usually holds). An
//! entry whose bucket is full again says nothing and is dropped; the table holds at most
//! [`MAX_CLIENTS`] entries, and clients beyond that share one bucket, so no flood of addresses
//! grows it without bound.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;

use super::Conductor;
use super::error::ApiError;

/// Most clients tracked one by one: under 100 bytes each, a few MiB in all.
pub(super) const MAX_CLIENTS: usize = 65_536;

/// How often the table is swept of full buckets when it is not full.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// How often a full table may be swept for a newcomer.
const SWEEP_WHEN_FULL_EVERY: Duration = Duration::from_secs(1);

/// A client that must wait this long before its next lookup or failed authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Limited(pub Duration);

pub(super) struct RateLimiter {
    /// Time between two requests at the sustained rate; `None` when the limit is off.
    interval: Option<Duration>,
    /// How far past now a client's theoretical arrival time may run: `burst` intervals.
    tolerance: Duration,
    max_clients: usize,
    table: Mutex<Table>,
}

struct Table {
    /// Each client's theoretical arrival time: when its bucket is full again.
    clients: HashMap<IpAddr, Instant>,
    /// The one bucket of the clients that found the table full.
    overflow: Instant,
    swept: Instant,
}

impl RateLimiter {
    /// `burst` requests at once, then `per_minute` a minute; `per_minute == 0` turns it off.
    pub(super) fn new(burst: u32, per_minute: u32) -> Self {
        Self::with_capacity(burst, per_minute, MAX_CLIENTS)
    }

    fn with_capacity(burst: u32, per_minute: u32, max_clients: usize) -> Self {
        let interval = (per_minute > 0).then(|| Duration::from_secs(60) / per_minute);
        let now = Instant::now();
        Self {
            interval,
            tolerance: interval.unwrap_or_default() * burst.max(1),
            max_clients,
            table: Mutex::new(Table {
                clients: HashMap::new(),
                overflow: now,
                swept: now,
            }),
        }
    }

    /// Takes one request from the client's allowance, or says how long until it has one.
    pub(super) fn charge(&self, client: IpAddr) -> Result<(), Limited> {
        self.take(client, Instant::now(), true)
    }

    /// Whether the client has a request left, taking none.
    pub(super) fn check(&self, client: IpAddr) -> Result<(), Limited> {
        self.take(client, Instant::now(), false)
    }

    fn take(&self, client: IpAddr, now: Instant, charge: bool) -> Result<(), Limited> {
        let Some(interval) = self.interval else {
            return Ok(());
        };
        let key = key(client);
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let table = &mut *table;
        if now.duration_since(table.swept) >= SWEEP_EVERY {
            table.sweep(now);
        }
        let mut tat = match table.clients.get(&key) {
            Some(tat) => *tat,
            None => {
                // Full: sweep, but not at every newcomer, which would make each cost a scan.
                if table.clients.len() >= self.max_clients
                    && now.duration_since(table.swept) >= SWEEP_WHEN_FULL_EVERY
                {
                    table.sweep(now);
                }
                if table.clients.len() >= self.max_clients {
                    return self.conform(&mut table.overflow, now, interval, charge);
                }
                // Not in the table: its bucket is full.
                now
            }
        };
        let result = self.conform(&mut tat, now, interval, charge);
        if charge && result.is_ok() {
            table.clients.insert(key, tat);
        }
        result
    }

    /// GCRA: a request at `now` conforms when the arrival time it pushes to stays within the
    /// tolerance; `tat` moves only when `charge` and it conforms.
    fn conform(
        &self,
        tat: &mut Instant,
        now: Instant,
        interval: Duration,
        charge: bool,
    ) -> Result<(), Limited> {
        let next = (*tat).max(now) + interval;
        let allowed_until = now + self.tolerance;
        if next > allowed_until {
            return Err(Limited(next - allowed_until));
        }
        if charge {
            *tat = next;
        }
        Ok(())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().unwrap().clients.len()
    }
}

impl Table {
    /// Drops the clients whose bucket is full again: they are as good as new.
    fn sweep(&mut self, now: Instant) {
        self.clients.retain(|_, tat| *tat > now);
        if self.clients.capacity() > 4 * self.clients.len().max(1024) {
            self.clients.shrink_to_fit();
        }
        self.swept = now;
    }
}

/// IPv4 addresses (IPv4-mapped IPv6 ones included) as they are; IPv6 ones by their /64.
fn key(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(_) => client,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

/// The peer address of the request's TCP connection.
pub(super) fn client_ip(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
        // Only a router served without connect info lacks it: all such requests share a key.
        .unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED))
}

/// A request that draws on its client's allowance (a lookup) before anything of it is read:
/// refused with `429 rate_limited` when none is left.
pub(super) struct Throttled(pub IpAddr);

impl FromRequestParts<Arc<Conductor>> for Throttled {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, c: &Arc<Conductor>) -> Result<Self, ApiError> {
        let client = client_ip(parts);
        c.limiter.charge(client).map_err(|l| refused(client, l))?;
        Ok(Self(client))
    }
}

pub(super) fn refused(client: IpAddr, Limited(wait): Limited) -> ApiError {
    tracing::debug!(
        client = %client,
        retry_after_ms = wait.as_millis() as u64,
        "rate limited"
    );
    ApiError::rate_limited(wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let limiter = RateLimiter::new(3, 60);
        let (a, t0) = (ip("192.0.2.1"), Instant::now());
        for _ in 0..3 {
            assert_eq!(limiter.take(a, t0, true), Ok(()));
        }
        assert_eq!(
            limiter.take(a, t0, false),
            Err(Limited(Duration::from_secs(1)))
        );
        assert_eq!(
            limiter.take(a, t0, true),
            Err(Limited(Duration::from_secs(1)))
        );
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(limiter.take(a, t1, true), Ok(()));
        assert!(limiter.take(a, t1, true).is_err());
        // Others are untouched; a full bucket again forgets the client.
        assert_eq!(limiter.take(ip("192.0.2.2"), t1, true), Ok(()));
        let later = t1 + Duration::from_secs(4);
        for _ in 0..3 {
            assert_eq!(limiter.take(a, later, true), Ok(()));
        }
    }

    #[test]
    fn checking_takes_nothing_and_off_allows_everything() {
        let limiter = RateLimiter::new(1, 60);
        let (a, t0) = (ip("192.0.2.1"), Instant::now());
        for _ in 0..5 {
            assert_eq!(limiter.take(a, t0, false), Ok(()));
        }
        assert_eq!(limiter.len(), 0, "a check stores nothing");
        assert_eq!(limiter.take(a, t0, true), Ok(()));
        assert!(limiter.take(a, t0, false).is_err());
        let off = RateLimiter::new(1, 0);
        for _ in 0..100 {
            assert_eq!(off.take(a, t0, true), Ok(()));
        }
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let limiter = RateLimiter::new(1, 60);
        let t0 = Instant::now();
        assert_eq!(limiter.take(ip("2001:db8:1:2::1"), t0, true), Ok(()));
        assert!(limiter.take(ip("2001:db8:1:2:ffff::9"), t0, true).is_err());
        assert_eq!(limiter.take(ip("2001:db8:1:3::1"), t0, true), Ok(()));
        assert_eq!(limiter.take(ip("::ffff:192.0.2.7"), t0, true), Ok(()));
        assert!(
            limiter.take(ip("192.0.2.7"), t0, true).is_err(),
            "mapped is the same"
        );
    }

    #[test]
    fn the_table_stays_bounded_and_the_overflow_shares_one_bucket() {
        let limiter = RateLimiter::with_capacity(2, 60, 4);
        let t0 = Instant::now();
        for i in 0..4 {
            assert_eq!(limiter.take(ip(&format!("192.0.2.{i}")), t0, true), Ok(()));
        }
        // Full of live entries: newcomers share one bucket of the same size.
        assert_eq!(limiter.take(ip("198.51.100.1"), t0, true), Ok(()));
        assert_eq!(limiter.take(ip("198.51.100.2"), t0, true), Ok(()));
        assert!(limiter.take(ip("198.51.100.3"), t0, true).is_err());
        assert!(limiter.take(ip("198.51.100.3"), t0, false).is_err());
        assert_eq!(limiter.len(), 4);
        // Once the entries are idle, a newcomer sweeps them and gets its own.
        let later = t0 + Duration::from_secs(2);
        assert_eq!(limiter.take(ip("198.51.100.3"), later, true), Ok(()));
        assert_eq!(limiter.len(), 1);
        // Churn never grows the table past its bound.
        for i in 0..1000u32 {
            let a = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let _ = limiter.take(a, later, true);
            assert!(limiter.len() <= 4);
        }
    }
}

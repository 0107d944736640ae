//! The conductor's HTTP/1.1 server loop. axum routes the requests; this loop decides which
//! connections get that far: TLS when configured, a time limit on each request's headers and
//! body (which also closes idle keep-alive connections), caps on open connections in all and per
//! client address, and a shutdown that waits for running requests only so long. Each
//! connection's HTTP is [`super::http1`]'s.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use futures_util::FutureExt;
use futures_util::future::Either;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;

/// What a client may hold and for how long.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// To complete the TLS handshake, to send a request's headers, to send its body, and to
    /// start the next request on a keep-alive connection.
    pub header_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    /// How long shutdown waits for running requests before it drops them.
    pub shutdown_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains for at most
/// `limits.shutdown_timeout`.
pub(crate) async fn run(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let gate = Arc::new(Gate::new(&limits));
    let (drain, draining) = watch::channel(false);
    let connection = Arc::new(Connection {
        app,
        tls,
        header_timeout: limits.header_timeout,
        draining,
    });
    // Each connection holds a sender; the receiver learns that all are gone when it is closed.
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Some(admitted) = gate.admit(peer.ip()) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Plain and TLS connections are tasks of their own types, so that a plain one is not
        // as large as a TLS one: each waiting long-poll holds its task.
        let open = open.clone();
        match connection.tls.clone() {
            None => {
                let served = connection.serve_http(stream, peer);
                tokio::spawn(finish(served, peer, (admitted, open)));
            }
            Some(acceptor) => {
                let guard = (admitted, open);
                tokio::spawn(tls_connection(
                    connection.clone(),
                    acceptor,
                    stream,
                    peer,
                    guard,
                ));
            }
        }
    }
    drop(listener);
    // Idle connections close now, the others after their running request.
    drain.send_replace(true);
    drop(open);
    tokio::select! {
        _ = all_closed.recv() => {}
        _ = tokio::time::sleep(limits.shutdown_timeout) => {
            tracing::warn!(
                waited_s = limits.shutdown_timeout.as_secs(),
                "stopping with requests still running"
            );
        }
    }
}

struct Connection {
    app: Router,
    tls: Option<TlsAcceptor>,
    header_timeout: Duration,
    /// Turns true when the server stops.
    draining: watch::Receiver<bool>,
}

impl Connection {
    /// The connection's future, holding `io` once (an `async fn` would hold it again).
    fn serve_http<IO>(
        &self,
        io: IO,
        peer: SocketAddr,
    ) -> impl Future<Output = std::io::Result<()>> + use<IO>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let (app, draining) = (self.app.clone(), self.draining.clone());
        super::http1::serve(io, peer, app, self.header_timeout, draining)
    }
}

/// `served`, then `guard` dropped. Through `map`, not an async block that awaits `served`: such
/// a block holds the connection's future twice (in a release build 8.8 KiB a connection where
/// the future itself takes 2.2), and every waiting long-poll holds it.
fn finish<G>(
    served: impl Future<Output = std::io::Result<()>>,
    peer: SocketAddr,
    guard: G,
) -> impl Future<Output = ()> {
    served.map(move |result| {
        connection_ended(peer, result);
        drop(guard);
    })
}

/// A TLS connection's task, given what to drop at its end: the handshake, then the
/// connection's future, each held once and never both (an async block holding both took
/// 7.4 KiB more a waiting long-poll than a plain connection).
fn tls_connection<IO, G>(
    connection: Arc<Connection>,
    acceptor: TlsAcceptor,
    stream: IO,
    peer: SocketAddr,
    guard: G,
) -> impl Future<Output = ()>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let timeout = connection.header_timeout;
    handshake(acceptor, stream, timeout, peer).then(move |tls| match tls {
        Some(tls) => Either::Left(finish(connection.serve_http(tls, peer), peer, guard)),
        None => Either::Right(std::future::ready(())),
    })
}

/// The TLS stream, boxed so that the connection's future holds a pointer to it; `None` when
/// the handshake failed or took too long.
async fn handshake<IO>(
    acceptor: TlsAcceptor,
    stream: IO,
    timeout: Duration,
    peer: SocketAddr,
) -> Option<Box<tokio_rustls::server::TlsStream<IO>>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(Box::new(tls)),
        Ok(Err(error)) => {
            tracing::debug!(client = %peer, %error, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(client = %peer, "TLS handshake timed out");
            None
        }
    }
}

fn connection_ended(peer: SocketAddr, result: std::io::Result<()>) {
    if let Err(e) = result {
        tracing::debug!(client = %peer, error = %e, "connection ended");
    }
}

/// Counts open connections, in all and per client address.
struct Gate {
    total: Arc<Semaphore>,
    per_address: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max_per_address: usize,
    /// Refusals since the last warning, and when that was: one line per burst, not per socket.
    refused: Mutex<(u64, Option<Instant>)>,
}

/// An open connection's place; it is given back when dropped.
struct Admitted {
    _total: OwnedSemaphorePermit,
    address: IpAddr,
    per_address: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Gate {
    fn new(limits: &Limits) -> Self {
        Self {
            total: Arc::new(Semaphore::new(limits.max_connections)),
            per_address: Arc::default(),
            max_per_address: limits.max_connections_per_address,
            refused: Mutex::new((0, None)),
        }
    }

    fn admit(&self, address: IpAddr) -> Option<Admitted> {
        let Ok(total) = self.total.clone().try_acquire_owned() else {
            self.refuse(address, "the conductor's connection limit is reached");
            return None;
        };
        let mut counts = self.per_address.lock().unwrap_or_else(|e| e.into_inner());
        let open = counts.entry(address).or_default();
        if *open >= self.max_per_address {
            drop(counts);
            self.refuse(address, "this address has too many connections open");
            return None;
        }
        *open += 1;
        Some(Admitted {
            _total: total,
            address,
            per_address: self.per_address.clone(),
        })
    }

    fn refuse(&self, address: IpAddr, why: &str) {
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        refused.0 += 1;
        let due = refused
            .1
            .is_none_or(|last| last.elapsed() >= Duration::from_secs(10));
        if due {
            tracing::warn!(
                kind = "connection_refused",
                client = %address,
                refused = refused.0,
                "closing new connections: {why}"
            );
            *refused = (0, Some(Instant::now()));
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut counts = self.per_address.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(open) = counts.get_mut(&self.address) {
            *open -= 1;
            if *open == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::http1::tests::size_of_future;
    use super::*;

    fn limits(total: usize, per_address: usize) -> Limits {
        Limits {
            header_timeout: Duration::from_secs(1),
            max_connections: total,
            max_connections_per_address: per_address,
            shutdown_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn the_gate_caps_each_address_and_the_total_and_gives_places_back() {
        let gate = Gate::new(&limits(3, 2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = gate.admit(a).expect("first from a");
        let _a2 = gate.admit(a).expect("second from a");
        assert!(gate.admit(a).is_none(), "a third from one address");
        let b1 = gate.admit(b).expect("first from b");
        assert!(gate.admit(b).is_none(), "the total is reached");
        drop(a1);
        assert!(gate.admit(a).is_some(), "a's place came back");
        drop(b1);
        assert!(
            !gate.per_address.lock().unwrap().contains_key(&b),
            "an address with no connection leaves the table"
        );
    }

    /// Every waiting long-poll holds its connection's task: it must hold the connection's
    /// future once, not twice.
    #[test]
    fn a_connection_task_holds_its_future_once() {
        let (_drain, draining) = watch::channel(false);
        let peer: SocketAddr = "192.0.2.1:1234".parse().unwrap();
        let serve = |io: tokio::net::TcpStream| {
            super::super::http1::serve(io, peer, Router::new(), Duration::ZERO, draining.clone())
        };
        let served = size_of_future(serve);
        let task = size_of_future(|io| finish(serve(io), peer, ((), ())));
        assert!(
            task <= served + 64,
            "the task takes {task} bytes, its future {served}"
        );
    }

    /// Nor a TLS connection's task: it holds the handshake, then the connection's future.
    #[test]
    fn a_tls_connection_task_holds_the_handshake_or_the_connection() {
        type Io = tokio::net::TcpStream;
        let (_drain, draining) = watch::channel(false);
        let peer: SocketAddr = "192.0.2.1:1234".parse().unwrap();
        let served = size_of_future(|io: Box<tokio_rustls::server::TlsStream<Io>>| {
            super::super::http1::serve(io, peer, Router::new(), Duration::ZERO, draining.clone())
        });
        let handshake =
            size_of_future(|(a, io): (TlsAcceptor, Io)| handshake(a, io, Duration::ZERO, peer));
        let task = size_of_future(|(c, a, io): (Arc<Connection>, TlsAcceptor, Io)| {
            tls_connection(c, a, io, peer, ((), ()))
        });
        assert!(
            task <= served.max(handshake) + 128,
            "the task takes {task} bytes, the handshake {handshake}, the connection {served}"
        );
    }
}

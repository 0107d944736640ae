//! One HTTP/1.1 connection of the conductor, read and written here rather than by hyper. hyper
//! keeps an 8 KiB read buffer and an 8 KiB write buffer for a connection's whole life, which was
//! two thirds of what each waiting long-poll cost (BENCHMARKS.md, "Conductor at fleet scale").
//! Here a connection holds a buffer only while a request's bytes are in it: a request is read
//! whole (head, then a body of at most [`MAX_BODY`] by its `Content-Length`), handed to the
//! router, and its response written in one piece.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};
use axum::http::{Response, header};
use axum::response::IntoResponse;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;
use tower::ServiceExt;

use super::error::ApiError;

/// Longest request head (request line and header fields).
const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in a request.
const MAX_HEADERS: usize = 100;
/// Largest request body, as the router's own limit (`413` past it).
pub(super) const MAX_BODY: usize = 1024 * 1024;
/// How long a refused request's remaining bytes are read before the connection closes.
const LINGER: Duration = Duration::from_secs(2);
/// Bytes read from the connection at a time, into a buffer that lives only during the read.
const READ_CHUNK: usize = 4096;

/// Serves requests on `io` until the client closes it, it stays silent for `header_timeout`
/// between requests (or takes longer to send one), or `draining` turns true while no request
/// is being served.
pub(crate) async fn serve<IO>(
    mut io: IO,
    peer: SocketAddr,
    app: Router,
    header_timeout: Duration,
    mut draining: watch::Receiver<bool>,
) -> io::Result<()>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    // Bytes received and not yet used; empty, without capacity, whenever no request is partly
    // read (a pipelined next request is the exception).
    let mut buf = Vec::new();
    loop {
        let read = tokio::time::timeout(header_timeout, read_head(&mut io, &mut buf));
        let head = tokio::select! {
            () = drained(&mut draining) => return Ok(()),
            read = read => match read {
                Err(_) => return Ok(()),
                Ok(Ok(Some(head))) => head,
                Ok(Ok(None)) => return Ok(()),
                Ok(Err(Refusal::Io(e))) => return Err(e),
                Ok(Err(Refusal::Answer(status, message))) => {
                    write_response(&mut io, refusal(status, message), false, true).await?;
                    // What the client still sends is read and dropped for a while: closing on
                    // unread bytes resets the connection, and the client may lose the answer.
                    let _ = tokio::time::timeout(LINGER, discard(&mut io)).await;
                    return Ok(());
                }
            },
        };
        let length = head.content_length;
        if length > 0 {
            if head.expect_continue && buf.is_empty() {
                io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
                io.flush().await?;
            }
            let read = tokio::time::timeout(header_timeout, read_body(&mut io, &mut buf, length));
            tokio::select! {
                () = drained(&mut draining) => return Ok(()),
                read = read => match read {
                    Ok(Ok(true)) => {}
                    // Too slow, or closed before the body's end.
                    Err(_) | Ok(Ok(false)) => return Ok(()),
                    Ok(Err(e)) => return Err(e),
                },
            }
        }
        let body = take_front(&mut buf, length);
        let close = head.close;
        let head_only = head.method == Method::HEAD;
        let mut request = Request::new(Body::from(body));
        *request.method_mut() = head.method;
        *request.uri_mut() = head.uri;
        *request.version_mut() = head.version;
        *request.headers_mut() = head.headers;
        // Handlers that need the client's address (lookup limits, logs) read it from here.
        request.extensions_mut().insert(ConnectInfo(peer));
        let call = app.clone().oneshot(request);
        tokio::pin!(call);
        // While the request is served (a long-poll waits), the connection is watched only to
        // learn that the client went away: then the request is dropped.
        let response = loop {
            tokio::select! {
                response = &mut call => break response,
                read = read_some(&mut io, &mut buf), if buf.len() < MAX_HEAD => match read {
                    Ok(0) | Err(_) => return Ok(()),
                    Ok(_) => {}
                },
            }
        };
        let Ok(response) = response;
        let close = close || *draining.borrow();
        write_response(&mut io, response, head_only, close).await?;
        if close {
            return Ok(());
        }
    }
}

/// Returns when the server starts to drain (or is gone).
async fn drained(draining: &mut watch::Receiver<bool>) {
    let _ = draining.wait_for(|stop| *stop).await;
}

/// A request's head, parsed and checked.
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    content_length: usize,
    expect_continue: bool,
    /// The connection closes after the response.
    close: bool,
}

enum Refusal {
    Io(io::Error),
    /// Answered with this status, then the connection closes.
    Answer(StatusCode, &'static str),
}

/// The next request's head, or `None` when the client closed the connection between requests.
async fn read_head<IO>(io: &mut IO, buf: &mut Vec<u8>) -> Result<Option<Head>, Refusal>
where
    IO: AsyncRead + Unpin,
{
    loop {
        if !buf.is_empty() {
            if let Some((head, length)) = parse_head(buf)? {
                buf.drain(..length);
                return Ok(Some(head));
            }
            if buf.len() >= MAX_HEAD && !buf.contains(&b'\n') {
                return Err(Refusal::Answer(
                    StatusCode::URI_TOO_LONG,
                    "the request line is over 64 KiB",
                ));
            }
            if buf.len() >= MAX_HEAD {
                return Err(Refusal::Answer(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "the request's head is over 64 KiB",
                ));
            }
        }
        if read_some(io, buf).await.map_err(Refusal::Io)? == 0 {
            return match buf.is_empty() {
                true => Ok(None),
                false => Err(Refusal::Io(io::ErrorKind::UnexpectedEof.into())),
            };
        }
    }
}

/// Reads and drops what the client sends, up to [`MAX_BODY`] bytes or the end of the stream.
async fn discard<IO>(io: &mut IO) -> io::Result<()>
where
    IO: AsyncRead + Unpin,
{
    let (mut scratch, mut total) = (Vec::new(), 0);
    while total <= MAX_BODY {
        scratch.clear();
        match read_some(io, &mut scratch).await? {
            0 => break,
            n => total += n,
        }
    }
    Ok(())
}

/// Reads until `buf` holds `length` bytes; false if the connection closed before.
async fn read_body<IO>(io: &mut IO, buf: &mut Vec<u8>, length: usize) -> io::Result<bool>
where
    IO: AsyncRead + Unpin,
{
    buf.reserve(length.saturating_sub(buf.len()));
    while buf.len() < length {
        if read_some(io, buf).await? == 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Reads what is there into `buf`; 0 at the end of the stream. Nothing is held between two
/// reads but `buf` itself: the chunk read into lives on the stack of one poll.
async fn read_some<IO>(io: &mut IO, buf: &mut Vec<u8>) -> io::Result<usize>
where
    IO: AsyncRead + Unpin,
{
    std::future::poll_fn(|cx| poll_read_into(Pin::new(&mut *io), cx, buf)).await
}

/// Not inlined, so that its chunk stays on the stack and never becomes part of the
/// connection's future (a release build made that future 8 KiB when it did).
#[inline(never)]
fn poll_read_into<IO: AsyncRead>(
    io: Pin<&mut IO>,
    cx: &mut Context<'_>,
    buf: &mut Vec<u8>,
) -> Poll<io::Result<usize>> {
    let mut chunk = [0u8; READ_CHUNK];
    let mut read = ReadBuf::new(&mut chunk);
    ready!(io.poll_read(cx, &mut read))?;
    buf.extend_from_slice(read.filled());
    Poll::Ready(Ok(read.filled().len()))
}

/// The first `length` bytes of `buf`, leaving the rest; `buf` keeps no capacity when empty.
fn take_front(buf: &mut Vec<u8>, length: usize) -> Bytes {
    let rest = buf.split_off(length);
    let front = std::mem::replace(buf, rest);
    if buf.is_empty() {
        *buf = Vec::new();
    }
    Bytes::from(front)
}

/// The head at the start of `buf` and its length, `None` if it is not complete yet. Not
/// inlined: its array of header fields must stay out of the connection's future.
#[inline(never)]
fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, Refusal> {
    let bad = |message| Refusal::Answer(StatusCode::BAD_REQUEST, message);
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut fields);
    let length = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::Answer(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "the request has over 100 header fields",
            ));
        }
        Err(_) => return Err(bad("the request's head is malformed")),
    };
    let method = parsed
        .method
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok());
    let uri = parsed.path.and_then(|p| p.parse::<Uri>().ok());
    let (Some(method), Some(uri)) = (method, uri) else {
        return Err(bad("the request line is malformed"));
    };
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let mut head = Head {
        method,
        uri,
        version,
        headers: HeaderMap::with_capacity(parsed.headers.len()),
        content_length: 0,
        expect_continue: false,
        // HTTP/1.0 connections are not kept alive.
        close: version == Version::HTTP_10,
    };
    let mut content_length = None;
    for field in parsed.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(field.name.as_bytes()),
            HeaderValue::from_bytes(field.value),
        ) else {
            return Err(bad("a header field is malformed"));
        };
        if name == header::CONTENT_LENGTH {
            let length = std::str::from_utf8(field.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| bad("Content-Length is not a number"))?;
            if content_length.is_some_and(|seen| seen != length) {
                return Err(bad("two different Content-Length fields"));
            }
            content_length = Some(length);
        } else if name == header::TRANSFER_ENCODING {
            // Every client of the API sends a length; a body of unknown length is refused
            // rather than decoded (and never mistaken for the next request).
            return Err(Refusal::Answer(
                StatusCode::LENGTH_REQUIRED,
                "a request body needs a Content-Length",
            ));
        } else if name == header::CONNECTION {
            let tokens = field.value.split(|&b| b == b',');
            if tokens
                .map(<[u8]>::trim_ascii)
                .any(|t| t.eq_ignore_ascii_case(b"close"))
            {
                head.close = true;
            }
        } else if name == header::EXPECT {
            if !field.value.eq_ignore_ascii_case(b"100-continue") {
                return Err(Refusal::Answer(
                    StatusCode::EXPECTATION_FAILED,
                    "the only expectation met is 100-continue",
                ));
            }
            head.expect_continue = true;
        }
        head.headers.append(name, value);
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > MAX_BODY as u64 {
        return Err(Refusal::Answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request body is over 1 MiB",
        ));
    }
    head.content_length = content_length as usize;
    Ok(Some((head, length)))
}

fn refusal(status: StatusCode, message: &'static str) -> Response<Body> {
    let kind = match status {
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "headers_too_large",
        StatusCode::URI_TOO_LONG => "uri_too_long",
        _ => "invalid_request",
    };
    let mut response = ApiError::new(status, kind, message).into_response();
    // As every answer of the router carries it (docs/protocol.md).
    response.headers_mut().insert(
        crate::protocol::VERSION_HEADER,
        HeaderValue::from_static(crate::protocol::VERSION),
    );
    response
}

/// Writes `response` whole: status line, header fields, `Date`, `Content-Length`, body.
async fn write_response<IO>(
    io: &mut IO,
    response: Response<Body>,
    head_only: bool,
    close: bool,
) -> io::Result<()>
where
    IO: AsyncWrite + Unpin,
{
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(io::Error::other)?;
    let status = parts.status;
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut out = Vec::with_capacity(256 + 64 * parts.headers.len() + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        // Framing is this writer's; the router's answer to a HEAD keeps its length.
        let framing = name == header::CONNECTION
            || name == header::TRANSFER_ENCODING
            || name == header::DATE
            || (name == header::CONTENT_LENGTH && !head_only);
        if !framing {
            field(&mut out, name.as_str(), value.as_bytes());
        }
    }
    let date = httpdate::fmt_http_date(SystemTime::now());
    field(&mut out, "date", date.as_bytes());
    if !bodiless && !head_only {
        field(
            &mut out,
            "content-length",
            body.len().to_string().as_bytes(),
        );
    }
    if close {
        field(&mut out, "connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    if !bodiless && !head_only {
        out.extend_from_slice(&body);
    }
    io.write_all(&out).await?;
    io.flush().await?;
    if close {
        let _ = io.shutdown().await;
    }
    Ok(())
}

fn field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use axum::routing::{get, post};
    use tokio::io::{AsyncReadExt, DuplexStream};

    fn app() -> Router {
        Router::new()
            .route("/hello", get(|| async { "hello" }))
            .route("/echo", post(|body: Bytes| async move { body }))
            .route(
                "/wait",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    "late"
                }),
            )
    }

    /// A served connection, its client end, and the drain switch.
    fn connection() -> (
        DuplexStream,
        watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let (drain, draining) = watch::channel(false);
        let peer: SocketAddr = "192.0.2.1:1234".parse().unwrap();
        let served = tokio::spawn(async move {
            let _ = serve(server, peer, app(), Duration::from_secs(5), draining).await;
        });
        (client, drain, served)
    }

    /// Everything the server sends until it closes the connection.
    async fn all(client: &mut DuplexStream) -> String {
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    }

    /// The size of the future that `f` returns, without calling it.
    pub(in crate::conductor) fn size_of_future<A, F: Future>(_: impl Fn(A) -> F) -> usize {
        size_of::<F>()
    }

    /// Every waiting long-poll holds its connection's future.
    #[test]
    fn a_connection_future_stays_small() {
        let (_drain, draining) = watch::channel(false);
        let peer: SocketAddr = "192.0.2.1:1234".parse().unwrap();
        let size = size_of_future(|io: tokio::net::TcpStream| {
            serve(io, peer, Router::new(), Duration::ZERO, draining.clone())
        });
        eprintln!("connection future: {size} bytes");
        assert!(size <= 4096, "{size} bytes");
    }

    #[tokio::test]
    async fn requests_are_answered_in_order_on_one_connection() {
        let (mut client, _drain, served) = connection();
        client
            .write_all(
                b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n\
                  POST /echo HTTP/1.1\r\nContent-Length: 4\r\n\r\nping\
                  GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n",
            )
            .await
            .unwrap();
        let out = all(&mut client).await;
        served.await.unwrap();
        let answers: Vec<&str> = out.split("HTTP/1.1 200 OK\r\n").skip(1).collect();
        assert_eq!(answers.len(), 3, "{out}");
        assert!(answers[0].contains("content-length: 5\r\n") && answers[0].ends_with("hello"));
        assert!(answers[1].ends_with("\r\n\r\nping"), "{}", answers[1]);
        assert!(
            answers[2].contains("connection: close\r\n"),
            "{}",
            answers[2]
        );
        assert!(out.contains("date: "), "{out}");
    }

    #[tokio::test]
    async fn bad_heads_and_bodies_are_refused_and_the_connection_closed() {
        for (request, status) in [
            (
                &b"GET /hello HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
                400,
            ),
            (b"GET /hello HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
            (
                b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                411,
            ),
            (
                b"POST /echo HTTP/1.1\r\nContent-Length: 1048577\r\n\r\n",
                413,
            ),
            (b"GET /hello HTTP/1.1\r\nExpect: magic\r\n\r\n", 417),
            (b"GET /he llo HTTP/1.1\r\n\r\n", 400),
        ] {
            let (mut client, _drain, served) = connection();
            client.write_all(request).await.unwrap();
            let out = all(&mut client).await;
            served.await.unwrap();
            assert!(
                out.starts_with(&format!("HTTP/1.1 {status} ")),
                "{}: {out}",
                String::from_utf8_lossy(request)
            );
            assert!(out.contains("\"kind\""), "an API error: {out}");
            assert!(out.contains("tether-protocol-version: 1\r\n"), "{out}");
        }
        let (mut client, _drain, served) = connection();
        let mut huge = b"GET /hello HTTP/1.1\r\nX-Long: ".to_vec();
        huge.resize(MAX_HEAD + 10, b'a');
        client.write_all(&huge).await.unwrap();
        assert!(all(&mut client).await.starts_with("HTTP/1.1 431 "));
        served.await.unwrap();
    }

    #[tokio::test]
    async fn a_client_that_expects_100_continue_is_told_to_go_on() {
        let (mut client, _drain, _served) = connection();
        client
            .write_all(b"POST /echo HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
            .await
            .unwrap();
        let mut interim = [0u8; 25];
        client.read_exact(&mut interim).await.unwrap();
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        client.write_all(b"ok").await.unwrap();
        let mut answer = vec![0u8; 512];
        let n = client.read(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("ok"));
    }

    #[tokio::test]
    async fn a_waiting_request_ends_when_its_client_goes_away_and_draining_closes_idle_ones() {
        let (mut client, _drain, served) = connection();
        client
            .write_all(b"GET /wait HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .expect("the connection ended with its client")
            .unwrap();

        let (mut client, drain, served) = connection();
        client
            .write_all(b"GET /hello HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut answer = vec![0u8; 512];
        assert!(client.read(&mut answer).await.unwrap() > 0);
        drain.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .expect("an idle connection closes when draining")
            .unwrap();
    }
}

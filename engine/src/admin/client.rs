//! The client side of the admin API: one `GET` per connection over hyper's
//! HTTP/1.1 client, shared by `ricochet status` ([`crate::status`]) and the
//! `/events` subscription ([`super::subscribe`]).
//!
//! The connection is driven by a task of its own, which the returned
//! [`Connection`] aborts when dropped, so a caller that gives up on a
//! response (a silent upstream, a timeout) closes the socket with it. A
//! response head may be at most [`MAX_HEAD`] bytes, hyper's smallest read
//! buffer; hyper bounds chunk-size lines and trailers itself.

use bytes::Bytes;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, HOST, HeaderName};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Most bytes of a response head (the admin API's are a few hundred).
pub(crate) const MAX_HEAD: usize = 8 * 1024;

/// One request: `GET path` to `host`, with `Authorization: Bearer token`
/// when given, and `headers`.
#[derive(Debug)]
pub(crate) struct Get<'a> {
    /// The `Host` header.
    pub(crate) host: &'a str,
    /// The request target.
    pub(crate) path: &'a str,
    /// The admin bearer token.
    pub(crate) token: Option<&'a str>,
    /// Further headers.
    pub(crate) headers: &'a [(HeaderName, &'a str)],
}

/// The task driving a request's connection; dropping it closes the
/// connection.
#[derive(Debug)]
pub(crate) struct Connection(tokio::task::JoinHandle<()>);

impl Drop for Connection {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why a request got no response head.
#[derive(Debug)]
pub(crate) enum Error {
    /// The request cannot be built (a header value with a control byte).
    Request(hyper::http::Error),
    /// The exchange failed: I/O, a malformed or oversized head, or the
    /// connection closed before the head.
    Http(hyper::Error),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Request(e) => write!(f, "building the request: {e}"),
            Error::Http(e) => e.fmt(f),
        }
    }
}

/// Sends `get` on `stream` and waits for the response head; the body
/// streams from the returned response while the [`Connection`] is kept.
pub(crate) async fn get(
    stream: TcpStream,
    get: &Get<'_>,
) -> Result<(Response<Incoming>, Connection), Error> {
    let mut req = Request::get(get.path).header(HOST, get.host);
    if let Some(t) = get.token {
        req = req.header(AUTHORIZATION, format!("Bearer {t}"));
    }
    for (name, value) in get.headers {
        req = req.header(name, *value);
    }
    let req = req.body(Empty::<Bytes>::new()).map_err(Error::Request)?;
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(Error::Http)?;
    let conn = Connection(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let resp = sender.send_request(req).await.map_err(Error::Http)?;
    Ok((resp, conn))
}

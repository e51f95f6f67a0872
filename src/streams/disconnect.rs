//! Noticing that the client of a held request went away.
//!
//! actix-web does not cancel a pending handler when its client disconnects
//! (actix/actix-web#3462), and a streaming body notices only on its next write. A long-poll
//! that waits 55 s for a client that left would hold its waiter slot all that time.
//!
//! So every plain-TCP connection keeps a duplicate of its socket's file descriptor
//! ([`on_connect`]). While a request is held, [`closed`] watches that duplicate: the peer
//! closing the connection makes it readable with zero bytes to peek, and the held request
//! returns at once, freeing its waiter. Peeking consumes nothing, so actix reads the
//! connection as before. The cost is one more file descriptor per connection. Connections
//! that are not plain TCP (TLS terminated in Herald, Unix sockets) fall back to the wait's
//! own timeout.

use std::any::Any;
use std::cell::Cell;
use std::os::fd::{AsFd as _, OwnedFd};
use std::rc::Rc;

use actix_web::HttpRequest;
use actix_web::dev::Extensions;

/// The duplicate socket of one connection, lent to one held request at a time.
#[derive(Clone)]
pub struct ConnSocket(Rc<Cell<Option<OwnedFd>>>);

impl std::fmt::Debug for ConnSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnSocket")
    }
}

/// `HttpServer::on_connect` hook: keeps a duplicate of the connection's socket.
pub fn on_connect(conn: &dyn Any, extensions: &mut Extensions) {
    if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>()
        && let Ok(fd) = tcp.as_fd().try_clone_to_owned()
    {
        extensions.insert(ConnSocket(Rc::new(Cell::new(Some(fd)))));
    }
}

/// The connection's socket watch, if this request came over plain TCP.
pub fn watch(req: &HttpRequest) -> Option<ConnSocket> {
    req.conn_data::<ConnSocket>().cloned()
}

/// Resolves when the peer has closed the connection; never resolves when that cannot be
/// known (no socket, or the client already sent more data, as with HTTP pipelining).
pub async fn closed(socket: Option<ConnSocket>) {
    let Some(socket) = socket else {
        return std::future::pending().await;
    };
    let Some(fd) = socket.0.take() else {
        return std::future::pending().await;
    };
    let mut lent = Lent {
        home: socket.0.clone(),
        stream: None,
    };
    let std_stream = std::net::TcpStream::from(fd);
    let stream = match std_stream
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpStream::from_std(std_stream))
    {
        Ok(stream) => lent.stream.insert(stream),
        Err(_) => return std::future::pending().await,
    };
    let mut buf = [0_u8; 1];
    match stream.peek(&mut buf).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

/// Puts the socket back for the connection's next request, however the wait ended.
struct Lent {
    home: Rc<Cell<Option<OwnedFd>>>,
    stream: Option<tokio::net::TcpStream>,
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(stream) = self.stream.take()
            && let Ok(std_stream) = stream.into_std()
        {
            self.home.set(Some(OwnedFd::from(std_stream)));
        }
    }
}

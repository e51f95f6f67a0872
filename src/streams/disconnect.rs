//! Noticing that the client of a held request went away.
//!
//! actix-web does not cancel a pending handler when its client disconnects
//! (actix/actix-web#3462), and a streaming body notices only on its next write. A long-poll
//! that waits 55 s for a client that left would hold its waiter slot all that time.
//!
//! So Herald watches the sockets of held requests itself. Every plain-TCP connection
//! records its socket's descriptor number ([`on_connect`]). While a request is held, that
//! socket is registered, read-closed interest, with the [`DisconnectWatcher`]: one thread
//! and one epoll instance of its own, separate from the runtime that serves the
//! connection. When the peer closes, the kernel reports it there and the held request
//! returns at once, freeing its waiter. Nothing is read from the socket, and no file
//! descriptor is duplicated, so a held request costs one descriptor, not two.
//!
//! The registration is made and removed while the request is held, and the connection
//! (which owns the socket) owns the held request, so the descriptor number names this
//! connection's socket while it is registered. (Should a connection close its socket before
//! dropping an SSE body, the kernel drops the registration with the socket, and the late
//! deregistration is a no-op.) Connections that are not
//! plain TCP (TLS terminated in Herald, Unix sockets) fall back to the wait's own timeout.

use std::any::Any;
use std::collections::HashMap;
use std::os::fd::{AsRawFd as _, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use actix_web::HttpRequest;
use actix_web::dev::Extensions;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use tokio::sync::oneshot;

const WAKER: Token = Token(usize::MAX);

/// The socket descriptor of one connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnFd(RawFd);

/// `HttpServer::on_connect` hook: remembers the connection's socket.
pub fn on_connect(conn: &dyn Any, extensions: &mut Extensions) {
    if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        extensions.insert(ConnFd(tcp.as_raw_fd()));
    }
}

/// The connection's socket, if this request came over plain TCP.
pub fn socket_of(req: &HttpRequest) -> Option<ConnFd> {
    req.conn_data::<ConnFd>().copied()
}

/// One thread that reports closed peers of registered sockets.
pub struct DisconnectWatcher {
    registry: Registry,
    waker: Waker,
    stopping: Arc<AtomicBool>,
    pending: Arc<Mutex<HashMap<Token, oneshot::Sender<()>>>>,
    next_token: AtomicUsize,
}

impl std::fmt::Debug for DisconnectWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DisconnectWatcher")
    }
}

impl DisconnectWatcher {
    /// Starts the watcher thread.
    pub fn start() -> std::io::Result<Arc<Self>> {
        let mut poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let stopping = Arc::new(AtomicBool::new(false));
        let pending: Arc<Mutex<HashMap<Token, oneshot::Sender<()>>>> = Arc::default();
        let (thread_stopping, thread_pending) = (stopping.clone(), pending.clone());
        std::thread::Builder::new()
            .name("herald-disconnects".into())
            .spawn(move || {
                let mut events = Events::with_capacity(256);
                while !thread_stopping.load(Ordering::Acquire) {
                    if poll.poll(&mut events, None).is_err() {
                        continue;
                    }
                    let mut pending = thread_pending
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    for event in &events {
                        if event.token() != WAKER
                            && (event.is_read_closed() || event.is_error())
                            && let Some(tx) = pending.remove(&event.token())
                        {
                            let _ = tx.send(());
                        }
                    }
                }
            })?;
        Ok(Arc::new(Self {
            registry,
            waker,
            stopping,
            pending,
            next_token: AtomicUsize::new(0),
        }))
    }

    /// Resolves when the peer of `socket` has closed the connection; never resolves when
    /// that cannot be known.
    pub async fn closed(self: Arc<Self>, socket: Option<ConnFd>) {
        let Some(ConnFd(fd)) = socket else {
            return std::future::pending().await;
        };
        let token = Token(self.next_token.fetch_add(1, Ordering::Relaxed) % (usize::MAX - 1));
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(token, tx);
        if self
            .registry
            .register(&mut SourceFd(&fd), token, Interest::READABLE)
            .is_err()
        {
            self.forget(token);
            return std::future::pending().await;
        }
        let _registered = Registered {
            watcher: self.clone(),
            fd,
            token,
        };
        if rx.await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    fn forget(&self, token: Token) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&token);
    }
}

impl Drop for DisconnectWatcher {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        let _ = self.waker.wake();
    }
}

/// Removes the registration however the wait ends.
struct Registered {
    watcher: Arc<DisconnectWatcher>,
    fd: RawFd,
    token: Token,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let _ = self.watcher.registry.deregister(&mut SourceFd(&self.fd));
        self.watcher.forget(self.token);
    }
}

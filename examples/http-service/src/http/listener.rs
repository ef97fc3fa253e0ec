//! The listening socket, with a backlog sized for a spike: thousands of users connect in the
//! same second, and connections the kernel cannot queue are dropped and retried by clients a
//! second later.

use axum::serve::{ListenerExt, TapIo};
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

pub fn bind(
    addr: SocketAddr,
    backlog: u32,
) -> std::io::Result<TapIo<TcpListener, impl FnMut(&mut TcpStream) + Send + 'static>> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(backlog)?;
    // Answers are one small write each: send them now, not after Nagle's delay.
    Ok(listener.tap_io(|stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    }))
}

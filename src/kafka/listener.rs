//! The Kafka listening sockets: one per shard, all bound to the same address
//! with SO_REUSEPORT, so the kernel spreads new connections over the shards.
//!
//! They are bound on the main thread before the shards start. A port of 0
//! picks a free port once and every shard binds that same port. A bind
//! failure (address in use, permission) stops the start with the address and
//! the reason.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};
use thiserror::Error;

/// Pending connections the kernel queues per shard socket.
const LISTEN_BACKLOG: i32 = 1024;

#[derive(Debug, Error)]
#[error("cannot listen on {address}: {source}")]
pub struct ListenError {
    pub address: SocketAddr,
    #[source]
    pub source: io::Error,
}

/// Bind `count` sockets to `address`; returns them and the bound address.
pub fn bind_shard_listeners(
    address: SocketAddr,
    count: usize,
) -> Result<(Vec<TcpListener>, SocketAddr), ListenError> {
    let mut bound = address;
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count {
        let listener = bind_one(bound).map_err(|source| ListenError {
            address: bound,
            source,
        })?;
        if bound.port() == 0 {
            bound = listener.local_addr().map_err(|source| ListenError {
                address: bound,
                source,
            })?;
        }
        listeners.push(listener);
    }
    Ok((listeners, bound))
}

fn bind_one(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    socket.bind(&address.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_resolves_once_for_every_shard() {
        let (listeners, bound) = bind_shard_listeners("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        assert_ne!(bound.port(), 0);
        for listener in &listeners {
            assert_eq!(listener.local_addr().unwrap(), bound);
        }
    }
}

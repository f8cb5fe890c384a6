//! The Kafka listening sockets: one per shard, all bound to the same address
//! with SO_REUSEPORT, so the kernel spreads new connections over the shards.
//!
//! They are bound on the main thread before the shards start. A port of 0
//! picks a free port once and every shard binds that same port. A bind
//! failure (address in use, permission) stops the start with the address and
//! the reason.
//!
//! SO_REUSEPORT lets any process of the same user join a port's group, so a
//! second broker started on a port already served would split the new
//! connections with the first without an error. A fixed port is therefore
//! first bound by a probe socket without SO_REUSEPORT, which the kernel
//! refuses (EADDRINUSE) while any socket listens there, reuse-port or not.

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
    if address.port() != 0 {
        probe_unused(address).map_err(|source| ListenError { address, source })?;
    }
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

/// Fail with `AddrInUse` (and a message saying what it means) when a
/// socket of any process already listens on `address`; the probe is closed
/// before returning.
fn probe_unused(address: SocketAddr) -> io::Result<()> {
    new_socket(address)?.bind(&address.into()).map_err(|error| {
        if error.kind() == io::ErrorKind::AddrInUse {
            io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{error}: another process (another broker?) listens there; stop it or pick another port (kafka.listen, --listen)"),
            )
        } else {
            error
        }
    })
}

fn bind_one(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = new_socket(address)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// A close-on-exec TCP socket for `address`'s family with SO_REUSEADDR,
/// which only passes over connections in TIME_WAIT left by a previous run
/// (a listening socket still refuses the bind).
fn new_socket(address: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_cloexec(true)?;
    Ok(socket)
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

    #[test]
    fn a_port_another_broker_listens_on_is_refused() {
        let (first, bound) = bind_shard_listeners("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let error = bind_shard_listeners(bound, 2).expect_err("a second group on the same port");
        assert_eq!(error.address, bound);
        assert_eq!(error.source.kind(), io::ErrorKind::AddrInUse);
        assert!(error.to_string().contains("another process"), "{error}");
        drop(first);
        let (_again, rebound) = bind_shard_listeners(bound, 2).expect("free once the first closed");
        assert_eq!(rebound, bound);
    }
}

//! Connections spread evenly over the shards.
//!
//! Every shard listens on the Kafka address with `SO_REUSEPORT`, and the
//! kernel picks the socket by a hash of the connection's addresses: with a
//! few connections, two busy ones land on the same shard about half the
//! time. The shard serving a connection does its socket copies (a consumer's
//! fetch responses, a producer's batches), so then one core did all of them
//! while the other had none: two consumers of 400 MB just written read
//! 1190–3700 MB/s from one broker, run to run (2026-12-03,
//! `benches/README.md`).
//!
//! So a shard that accepts a connection while it serves more than another
//! hands it to the one serving the fewest (its own on a tie): the socket
//! goes, as a plain file descriptor, through a channel to that shard's
//! adoption task, which serves it exactly as its own accept loop would. The
//! counts are connections being served, by shard; they are read without a
//! lock, so two shards accepting at once may both pick the same one, which
//! the next connections even out.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// A connection handed from the shard that accepted it to the one that
/// serves it.
pub struct Handoff {
    pub stream: std::net::TcpStream,
    pub peer: SocketAddr,
    /// Which listener accepted it (`Broker::listener`'s index).
    pub listener_index: usize,
    /// Its place in the serving shard's count.
    pub serving: ServingSlot,
    /// Its place under `kafka.connections_max`.
    pub open: super::ConnectionSlot,
}

/// The shards' connection counts and the channels between them.
pub struct ConnectionBalance {
    /// Connections being served (or on their way), by shard. Shared with
    /// the slots alone, so a handoff queued in a channel holds no
    /// reference to the channel itself.
    serving: Arc<[AtomicU32]>,
    handoffs: Box<[flume::Sender<Handoff>]>,
    /// Each shard's end of its channel, taken by its adoption task.
    receivers: Mutex<Vec<Option<flume::Receiver<Handoff>>>>,
}

impl ConnectionBalance {
    /// Counts and channels for `shards` shards (at least one).
    pub fn new(shards: usize) -> Arc<ConnectionBalance> {
        assert!(shards > 0, "a broker has at least one shard");
        let (handoffs, receivers) = (0..shards)
            .map(|_| {
                let (sender, receiver) = flume::unbounded();
                (sender, Some(receiver))
            })
            .unzip::<_, _, Vec<_>, Vec<_>>();
        Arc::new(ConnectionBalance {
            serving: (0..shards).map(|_| AtomicU32::new(0)).collect(),
            handoffs: handoffs.into(),
            receivers: Mutex::new(receivers),
        })
    }

    /// The shard that should serve a connection `here` accepted: the one
    /// serving the fewest, `here` when it is among them. Counted there from
    /// now until the returned slot is dropped.
    pub fn place(&self, here: usize) -> ServingSlot {
        let load = |shard: usize| self.serving[shard].load(Ordering::Relaxed);
        let fewest = (0..self.serving.len())
            .min_by_key(|&shard| (load(shard), shard != here))
            .unwrap_or(here);
        ServingSlot::new(self, fewest)
    }

    /// A slot for a connection served on the shard that accepted it,
    /// whatever the counts say (a handoff that could not be made).
    pub fn serve_here(&self, shard: usize) -> ServingSlot {
        ServingSlot::new(self, shard)
    }

    /// Shard `shard`'s end of its channel; `None` once taken.
    pub fn take_receiver(&self, shard: usize) -> Option<flume::Receiver<Handoff>> {
        self.receivers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_mut(shard)
            .and_then(Option::take)
    }

    /// Send `handoff` to the shard its slot names; gives it back if that
    /// shard no longer adopts connections (it is stopping).
    pub fn hand_off(&self, handoff: Handoff) -> Result<(), Handoff> {
        let shard = handoff.serving.shard;
        self.handoffs[shard]
            .send(handoff)
            .map_err(|unsent| unsent.into_inner())
    }

    /// Connections shard `shard` serves now (`sluice_kafka_shard_connections`,
    /// set by each shard's gauge refresher).
    pub fn serving(&self, shard: usize) -> u32 {
        self.serving[shard].load(Ordering::Relaxed)
    }
}

/// One connection in a shard's count, for as long as it is held.
pub struct ServingSlot {
    serving: Arc<[AtomicU32]>,
    shard: usize,
}

impl ServingSlot {
    fn new(balance: &ConnectionBalance, shard: usize) -> ServingSlot {
        balance.serving[shard].fetch_add(1, Ordering::Relaxed);
        ServingSlot {
            serving: Arc::clone(&balance.serving),
            shard,
        }
    }

    /// The shard serving the connection.
    pub fn shard(&self) -> usize {
        self.shard
    }
}

impl Drop for ServingSlot {
    fn drop(&mut self) {
        self.serving[self.shard].fetch_sub(1, Ordering::Relaxed);
    }
}

/// A plain socket for `stream`, to move it to another shard's runtime: a
/// duplicate of its descriptor (sharing the open socket and its flags);
/// `stream` itself is then dropped by the caller, closing only its own
/// descriptor. Fails only when the process is out of descriptors.
pub fn detach(stream: &compio::net::TcpStream) -> std::io::Result<std::net::TcpStream> {
    // SAFETY: fcntl on a descriptor `stream` keeps open for the call.
    let duplicate = unsafe { libc::fcntl(stream.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if duplicate < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `duplicate` is a new descriptor that nothing else owns.
    Ok(unsafe { std::net::TcpStream::from_raw_fd(duplicate) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_goes_to_the_shard_serving_the_fewest_and_stays_on_a_tie() {
        let balance = ConnectionBalance::new(3);
        let first = balance.place(1);
        assert_eq!(
            first.shard(),
            1,
            "a tie keeps the connection where it was accepted"
        );
        let second = balance.place(1);
        assert_eq!(second.shard(), 0, "shard 1 serves one, shard 0 none");
        let third = balance.place(1);
        assert_eq!(third.shard(), 2);
        assert_eq!(
            (balance.serving(0), balance.serving(1), balance.serving(2)),
            (1, 1, 1)
        );
        drop(second);
        assert_eq!(balance.serving(0), 0, "a dropped slot leaves the count");
        assert_eq!(balance.place(2).shard(), 0);
    }

    #[test]
    fn a_handoff_reaches_the_chosen_shard_and_comes_back_once_it_stopped() {
        let balance = ConnectionBalance::new(2);
        let receiver = balance.take_receiver(1).expect("first take");
        assert!(balance.take_receiver(1).is_none(), "taken once");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (stream, peer) = listener.accept().expect("accept");
        let _busy = balance.place(0);
        let serving = balance.place(0);
        assert_eq!(serving.shard(), 1);
        let handoff = Handoff {
            stream,
            peer,
            listener_index: 0,
            serving,
            open: crate::kafka::ConnectionSlot::admit(u32::MAX).expect("no limit"),
        };
        assert!(balance.hand_off(handoff).is_ok());
        let adopted = receiver.try_recv().expect("the shard's channel has it");
        assert_eq!(adopted.peer, client.local_addr().unwrap());
        drop(receiver);
        assert!(
            balance.hand_off(adopted).is_err(),
            "a stopped shard's handoff comes back to be served where it was accepted"
        );
    }
}

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
//! counts are read without a lock, so two shards accepting at once may both
//! pick the same one, which the next connections even out.
//!
//! What is counted first is the connections that move data: those that
//! have sent a Produce or a Fetch, and new ones that have not yet sent
//! anything but ApiVersions or SASL (they may be about to). A connection
//! whose first other request is a control one (Metadata, ListOffsets,
//! FindCoordinator, a group's or an admin's) stops counting there until it
//! sends a Produce or Fetch; one that has sent one counts until it closes,
//! whatever it sends after. Ties go to the fewest connections of any kind.
//! A client's idle bootstrap connection thus no longer weighs like a
//! consumer: counting every connection alike, `sluice bench consume`'s
//! metadata connection and its two consumers left both consumers on one
//! shard in about half the runs (4 of 10 passes over 400 MB on 2026-12-04,
//! one shard thread with all the CPU; 3340–3683 MB/s against 4250–4579
//! with one consumer each, `benches/README.md`).

use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use kafka_protocol::messages::ApiKey;

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

/// One shard's connection counts.
#[derive(Default)]
struct ShardCounts {
    /// Connections being served (or on their way).
    serving: AtomicU32,
    /// Those of them that move data or may ([`Role::weighs`]).
    weighing: AtomicU32,
}

/// What a connection has shown itself to be, by the requests it sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Nothing yet but ApiVersions or SASL.
    New,
    /// Control requests only (Metadata, ListOffsets, a group's, an admin's).
    Control,
    /// At least one Produce or Fetch.
    Data,
}

impl Role {
    /// Counted when placing a new connection.
    fn weighs(self) -> bool {
        self != Role::Control
    }

    /// The role after a request with `api_key`.
    fn after(self, api_key: i16) -> Role {
        let produce_or_fetch = [ApiKey::Produce, ApiKey::Fetch];
        let opening = [
            ApiKey::ApiVersions,
            ApiKey::SaslHandshake,
            ApiKey::SaslAuthenticate,
        ];
        if self == Role::Data || produce_or_fetch.iter().any(|key| *key as i16 == api_key) {
            Role::Data
        } else if opening.iter().any(|key| *key as i16 == api_key) {
            self
        } else {
            Role::Control
        }
    }
}

/// The shards' connection counts and the channels between them.
pub struct ConnectionBalance {
    /// Counts by shard. Shared with the slots alone, so a handoff queued in
    /// a channel holds no reference to the channel itself.
    counts: Arc<[ShardCounts]>,
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
            counts: (0..shards).map(|_| ShardCounts::default()).collect(),
            handoffs: handoffs.into(),
            receivers: Mutex::new(receivers),
        })
    }

    /// The shard that should serve a connection `here` accepted: the one
    /// with the fewest connections that move data or may (the module's
    /// doc), then the fewest of any kind, `here` when it is among them.
    /// Counted there from now until the returned slot is dropped.
    pub fn place(&self, here: usize) -> ServingSlot {
        let load = |shard: usize| {
            let counts: &ShardCounts = &self.counts[shard];
            (
                counts.weighing.load(Ordering::Relaxed),
                counts.serving.load(Ordering::Relaxed),
            )
        };
        let fewest = (0..self.counts.len())
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
        self.counts[shard].serving.load(Ordering::Relaxed)
    }

    /// Those of them that move data or may
    /// (`sluice_kafka_shard_data_connections`): what placement weighs first.
    pub fn weighing(&self, shard: usize) -> u32 {
        self.counts[shard].weighing.load(Ordering::Relaxed)
    }
}

/// One connection in a shard's counts, for as long as it is held.
pub struct ServingSlot {
    counts: Arc<[ShardCounts]>,
    shard: usize,
    role: Cell<Role>,
}

impl ServingSlot {
    fn new(balance: &ConnectionBalance, shard: usize) -> ServingSlot {
        let counts = &balance.counts[shard];
        counts.serving.fetch_add(1, Ordering::Relaxed);
        counts.weighing.fetch_add(1, Ordering::Relaxed);
        ServingSlot {
            counts: Arc::clone(&balance.counts),
            shard,
            role: Cell::new(Role::New),
        }
    }

    /// The shard serving the connection.
    pub fn shard(&self) -> usize {
        self.shard
    }

    /// The connection sent a request with `api_key` (read from its frame,
    /// before decoding: an unknown key is a control request). Moves it in
    /// or out of the count that placement weighs first.
    pub fn saw_request(&self, api_key: i16) {
        let before = self.role.get();
        let after = before.after(api_key);
        if before == after {
            return;
        }
        self.role.set(after);
        let weighing = &self.counts[self.shard].weighing;
        match (before.weighs(), after.weighs()) {
            (true, false) => {
                weighing.fetch_sub(1, Ordering::Relaxed);
            }
            (false, true) => {
                weighing.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

impl Drop for ServingSlot {
    fn drop(&mut self) {
        let counts = &self.counts[self.shard];
        counts.serving.fetch_sub(1, Ordering::Relaxed);
        if self.role.get().weighs() {
            counts.weighing.fetch_sub(1, Ordering::Relaxed);
        }
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

    const METADATA: i16 = ApiKey::Metadata as i16;
    const LIST_OFFSETS: i16 = ApiKey::ListOffsets as i16;
    const API_VERSIONS: i16 = ApiKey::ApiVersions as i16;
    const FETCH: i16 = ApiKey::Fetch as i16;
    const PRODUCE: i16 = ApiKey::Produce as i16;

    #[test]
    fn a_clients_idle_metadata_connection_does_not_weigh_like_its_consumers() {
        for here in [0, 1] {
            let balance = ConnectionBalance::new(2);
            let metadata = balance.place(0);
            metadata.saw_request(API_VERSIONS);
            metadata.saw_request(METADATA);
            metadata.saw_request(LIST_OFFSETS);
            assert_eq!((balance.weighing(0), balance.serving(0)), (0, 1));
            // Counting connections alike, the second consumer would tie
            // (one each) and stay on shard 1 when shard 1 accepted it.
            let first = balance.place(here);
            assert_eq!(first.shard(), 1, "no data either side: fewer connections");
            let second = balance.place(here);
            assert_eq!(second.shard(), 0, "shard 1 has a consumer, shard 0 none");
            first.saw_request(FETCH);
            second.saw_request(FETCH);
            assert_eq!((balance.weighing(0), balance.weighing(1)), (1, 1));
        }
    }

    #[test]
    fn a_connection_counts_again_once_it_moves_data_and_until_it_closes() {
        let balance = ConnectionBalance::new(2);
        let slot = balance.place(0);
        assert_eq!(balance.weighing(0), 1, "a new connection may move data");
        slot.saw_request(API_VERSIONS);
        assert_eq!(balance.weighing(0), 1, "ApiVersions says nothing yet");
        slot.saw_request(METADATA);
        assert_eq!(balance.weighing(0), 0, "control only");
        slot.saw_request(PRODUCE);
        assert_eq!(balance.weighing(0), 1, "a producer after all");
        slot.saw_request(METADATA);
        slot.saw_request(-7);
        assert_eq!(balance.weighing(0), 1, "a producer's metadata refresh");
        drop(slot);
        assert_eq!((balance.weighing(0), balance.serving(0)), (0, 0));
        let control = balance.place(0);
        control.saw_request(METADATA);
        drop(control);
        assert_eq!((balance.weighing(0), balance.serving(0)), (0, 0));
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

//! Bounded cross-shard mailboxes: how one shard asks another to do work.
//!
//! Each shard drains one bounded MPSC channel (`flume`). A message carries a
//! closure that runs on the receiving shard; it usually spawns a task there
//! and sends the task's result back through a oneshot. A full mailbox makes
//! the sender wait (backpressure), never grow. Waking the receiver goes
//! through compio's waker, which signals the receiving ring's eventfd.

use std::rc::Rc;
use std::sync::Arc;

use futures_channel::oneshot;
use thiserror::Error;

use super::ShardContext;
use super::request_clock::{self, RequestClock};
use crate::ids::ShardId;
use crate::storage::AppendError;

/// Messages a shard's mailbox holds before senders must wait.
pub const MAILBOX_CAPACITY: usize = 1024;

pub type Job = Box<dyn FnOnce(&Rc<ShardContext>) + Send>;

pub enum Message {
    Run(Job),
    /// Flush, fsync, checkpoint, then stop; the result goes back on the channel.
    Shutdown(std::sync::mpsc::Sender<(ShardId, Result<(), AppendError>)>),
}

#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error("{0} has stopped and accepts no more work")]
pub struct ShardGone(pub ShardId);

/// Handles to every shard's mailbox; cheap to clone and `Send`.
#[derive(Clone)]
pub struct Shards {
    senders: Arc<Vec<flume::Sender<Message>>>,
}

impl Shards {
    pub fn new(senders: Vec<flume::Sender<Message>>) -> Shards {
        Shards {
            senders: Arc::new(senders),
        }
    }

    pub fn count(&self) -> usize {
        self.senders.len()
    }

    pub fn ids(&self) -> impl Iterator<Item = ShardId> {
        (0..self.senders.len()).map(|index| ShardId(index as u16))
    }

    /// The shard that owns `topic`'s partition `index`: stable for a given
    /// shard count, and consecutive partitions of a topic land on
    /// consecutive shards.
    pub fn owner(&self, topic: &str, index: u32) -> ShardId {
        owner(topic, index, self.count())
    }

    /// Run `work` on `shard` and return its result. Waits while that shard's
    /// mailbox is full.
    pub async fn call<F, Fut, T>(&self, shard: ShardId, work: F) -> Result<T, ShardGone>
    where
        F: FnOnce(Rc<ShardContext>) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        let (reply, result) = oneshot::channel();
        let job: Job = Box::new(move |context: &Rc<ShardContext>| {
            let context = Rc::clone(context);
            compio::runtime::spawn(async move {
                // Timed here and charged to the caller's request, if any
                // (the `request_percentage` quota).
                let clock = RequestClock::default();
                let output = clock.time(std::pin::pin!(work(context))).await;
                let _ = reply.send((output, clock.total()));
            })
            .detach();
        });
        let sender = &self.senders[usize::from(shard.0)];
        // A send fails only when the shard's mailbox is closed; the error
        // merely hands the job back. A cancelled reply likewise means the
        // shard dropped the job unrun. Either way the shard is gone, which
        // is all there is to say.
        sender
            .send_async(Message::Run(job))
            .await
            .map_err(|_unsent_job| ShardGone(shard))?;
        let (output, busy) = result.await.map_err(|_reply_dropped| ShardGone(shard))?;
        request_clock::charge(busy);
        Ok(output)
    }

    pub(super) fn send_blocking(&self, shard: ShardId, message: Message) -> Result<(), ShardGone> {
        // The error only hands the message back: the mailbox is closed.
        self.senders[usize::from(shard.0)]
            .send(message)
            .map_err(|_unsent_message| ShardGone(shard))
    }
}

/// FNV-1a of the topic name plus the partition index, modulo `shards`.
pub fn owner(topic: &str, index: u32, shards: usize) -> ShardId {
    assert!(shards > 0);
    ShardId((partition_slot(topic, index) % shards as u64) as u16)
}

/// FNV-1a of the topic name plus the partition index: where a partition
/// goes, modulo the shard count on one node and modulo the shard-group
/// count in a cluster (`broker::metadata::Placement`), which keeps the
/// same shard index on every node.
pub fn partition_slot(topic: &str, index: u32) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = topic.bytes().fold(FNV_OFFSET, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
    });
    hash.wrapping_add(u64::from(index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_of_a_topic_spread_over_consecutive_shards() {
        let first = owner("orders", 0, 4).0;
        for index in 0..8 {
            assert_eq!(owner("orders", index, 4).0, (first + index as u16) % 4);
        }
        assert_eq!(owner("orders", 3, 4), owner("orders", 3, 4));
    }
}

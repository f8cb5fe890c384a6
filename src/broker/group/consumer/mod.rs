//! Consumer-protocol groups (KIP-848): the group coordinator's second kind
//! of group, next to the classic protocol of `membership.rs`. Members speak
//! ConsumerGroupHeartbeat; the broker assigns partitions.
//!
//! * [`member`]: a member, its subscription and its current assignment;
//! * [`reconcile`]: moving a member towards its target without giving a
//!   partition to two members;
//! * [`assignor`]: the `uniform` and `range` server-side assignors;
//! * [`subscription`]: subscriptions (names and regexes) resolved against
//!   the cluster's topics;
//! * [`group`]: the group's state machine (epochs, targets, timeouts);
//! * [`records`]: the group's records in `__consumer_offsets`;
//! * [`classic`]: members that join with JoinGroup, and the conversions
//!   between classic and consumer groups; [`embedded`]: the consumer
//!   protocol inside their JoinGroup and SyncGroup bytes.

pub mod assignor;
pub mod classic;
pub mod embedded;
pub mod group;
pub mod member;
pub mod reconcile;
pub mod records;
pub mod subscription;

#[cfg(test)]
mod tests;

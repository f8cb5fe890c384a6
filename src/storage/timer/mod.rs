//! The per-shard timer of delayed delivery (issue 18; ARCHITECTURE.md,
//! "Delayed delivery, retry and dead letters"): entries and the wheel that
//! orders them by due time, the held (timer) batch a produced batch's
//! delayed records are stored in, the notes that record deliveries and
//! rolls in the log, and the shard's timer that ties them to the log.

pub mod entry;
pub mod held;
pub mod index;
pub mod notes;
pub mod pairing;
pub mod shard_timer;

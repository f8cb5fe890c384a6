//! The per-shard timer of delayed delivery (issue 18; ARCHITECTURE.md,
//! "Delayed delivery, retry and dead letters"): entries and the wheel that
//! orders them by due time, and the held (timer) batch a produced batch's
//! delayed records are stored in. Being built: not yet fed by Produce.

pub mod entry;
pub mod held;
pub mod index;
pub mod pairing;

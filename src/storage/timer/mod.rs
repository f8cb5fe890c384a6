//! The per-shard timer of delayed delivery (issue 18; ARCHITECTURE.md,
//! "Delayed delivery, retry and dead letters"): entries and the wheel that
//! orders them by due time. Being built: not yet fed by Produce.

pub mod entry;
pub mod index;

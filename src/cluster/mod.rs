//! The cluster layer (ARCHITECTURE.md, "Cluster"): several nodes sharing
//! one replicated metadata. Without a `[cluster]` section nothing here
//! runs.
//!
//! * [`controller`]: the openraft group that orders metadata commands.

pub mod controller;

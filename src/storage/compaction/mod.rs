//! Log compaction (`cleanup.policy=compact`) on the shared commit log:
//! see ARCHITECTURE.md, "Log compaction".
//!
//! * [`commit`]: the commit frames that carry a pass's clean queue;
//! * [`clean_section`]: a partition's clean queue generations on disk;
//! * [`records`]: the records inside a batch, filtered and rebuilt;
//! * [`collector`]: the commit frames a shard has seen but not applied.

pub mod clean_section;
pub mod collector;
pub mod commit;
pub mod records;

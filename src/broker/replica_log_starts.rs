//! Log-start moves travelling to a shard group's copies (issue 16), as
//! Kafka's fetch responses carry each partition's log start offset to its
//! followers: DeleteRecords, retention and the coordinators' compaction
//! move a partition's log start on the leader, and its copies must not
//! serve (or, once promoted, bring back) what is below it.
//!
//! The leader numbers the changes of each group it leads: a version that
//! grows whenever a partition's log start is seen to move (looked at once
//! per [`REFRESH_INTERVAL`] at most, when a fetch is answered). A follower
//! sends the version it has applied; the answer lists every partition that
//! moved since (all of them with a log start above 0 when the follower's
//! version is not one this leader gave), after the fetch header:
//!
//! `version: u64`, `count: u32`, then `count` × (`partition id: u32`,
//! `log start offset: i64`), big-endian.
//!
//! The copy advances each partition's log start once it holds the
//! partition's records up to there; it keeps the version only when every
//! listed move could be applied, so the rest come again.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::ids::{Offset, PartitionId};
use crate::storage::ShardStore;

/// Partitions whose log start moved, with the new log start.
pub type LogStartMoves = Vec<(PartitionId, Offset)>;

/// How often a leader looks at its partitions' log starts, at most.
pub const REFRESH_INTERVAL: Duration = Duration::from_millis(100);

/// What a leader's group has told its followers about log starts.
#[derive(Default)]
struct Moves {
    /// The newest version given out (0: none yet).
    version: u64,
    /// Per partition: its log start and the version that set it.
    starts: HashMap<PartitionId, (Offset, u64)>,
    looked: Option<Instant>,
}

thread_local! {
    /// On a leader's shard, per group it leads.
    static LEADING: RefCell<HashMap<u32, Moves>> = RefCell::new(HashMap::new());
    /// On a follower's shard, per group it copies: the version applied.
    static APPLIED: RefCell<HashMap<u32, u64>> = RefCell::new(HashMap::new());
}

/// On the leader: the current version of group `group`'s log starts (kept
/// in `store`) and the moves a follower that applied `seen` lacks.
pub fn moves_since(group: u32, store: &ShardStore, seen: u64) -> (u64, LogStartMoves) {
    LEADING.with(|leading| {
        let mut leading = leading.borrow_mut();
        let moves = leading.entry(group).or_default();
        let now = Instant::now();
        if moves
            .looked
            .is_none_or(|looked| now.saturating_duration_since(looked) >= REFRESH_INTERVAL)
        {
            look(moves, store, now);
        }
        // A version this leader did not give (another leader's, or before
        // its restart): everything.
        let since = if seen > moves.version { 0 } else { seen };
        let listed = moves
            .starts
            .iter()
            .filter(|(_, (_, version))| *version > since)
            .map(|(id, (offset, _))| (*id, *offset))
            .collect();
        (moves.version, listed)
    })
}

/// On the leader, right after a log start moved (DeleteRecords): the
/// version that lists every move so far (looked at now).
pub fn version_now(group: u32, store: &ShardStore) -> u64 {
    LEADING.with(|leading| {
        let mut leading = leading.borrow_mut();
        let moves = leading.entry(group).or_default();
        look(moves, store, Instant::now());
        moves.version
    })
}

/// Record the partitions whose log start moved since the last look.
fn look(moves: &mut Moves, store: &ShardStore, now: Instant) {
    moves.looked = Some(now);
    for (_, _, id) in store.partitions() {
        let Some(start) = store.offsets(id).map(|offsets| offsets.log_start_offset) else {
            continue;
        };
        let known = moves.starts.get(&id).map(|(offset, _)| *offset);
        if start > Offset(0) && known != Some(start) {
            moves.version += 1;
            moves.starts.insert(id, (start, moves.version));
        }
    }
}

/// Append the moves section to a fetch answer.
pub fn encode(version: u64, moves: &[(PartitionId, Offset)], answer: &mut Vec<u8>) {
    answer.extend_from_slice(&version.to_be_bytes());
    let count = u32::try_from(moves.len()).expect("fewer partitions than 2^32");
    answer.extend_from_slice(&count.to_be_bytes());
    for (id, offset) in moves {
        answer.extend_from_slice(&id.0.to_be_bytes());
        answer.extend_from_slice(&offset.0.to_be_bytes());
    }
}

/// The moves section at the start of `bytes`, and what follows it. Errors:
/// a section cut short.
pub fn decode(bytes: &[u8]) -> Result<(u64, LogStartMoves, &[u8]), String> {
    let short = || format!("a {}-byte log-start section is cut short", bytes.len());
    let (version, rest) = bytes.split_first_chunk::<8>().ok_or_else(short)?;
    let (count, mut rest) = rest.split_first_chunk::<4>().ok_or_else(short)?;
    let count = u32::from_be_bytes(*count) as usize;
    // Sized by what arrived, not by the count it claims.
    let mut moves = Vec::with_capacity(count.min(rest.len() / 12));
    for _ in 0..count {
        let (id, after) = rest.split_first_chunk::<4>().ok_or_else(short)?;
        let (offset, after) = after.split_first_chunk::<8>().ok_or_else(short)?;
        moves.push((
            PartitionId(u32::from_be_bytes(*id)),
            Offset(i64::from_be_bytes(*offset)),
        ));
        rest = after;
    }
    Ok((u64::from_be_bytes(*version), moves, rest))
}

/// On a follower: the version of group `group`'s log starts it applied.
pub fn applied(group: u32) -> u64 {
    APPLIED.with(|applied| applied.borrow().get(&group).copied().unwrap_or(0))
}

/// On a follower that starts following a (new) leader: it applies every
/// move again, since versions are the leader's.
pub fn forget(group: u32) {
    APPLIED.with(|applied| applied.borrow_mut().remove(&group));
}

/// On a follower, after appending an answer's frames: advance each listed
/// partition's log start its high watermark reached, and keep `version`
/// when that was all of them.
pub fn apply(group: u32, store: &ShardStore, version: u64, moves: &[(PartitionId, Offset)]) {
    let mut all = true;
    for &(id, offset) in moves {
        let Some(offsets) = store.offsets(id) else {
            // A partition the copy lacks yet (reconciled on its next frame)
            // or one deleted since: asked again until it exists or the
            // leader stops listing it.
            all = false;
            continue;
        };
        if offsets.log_start_offset >= offset {
            continue;
        }
        // Applied once the copy shows the records up to there (its high
        // watermark follows the leader's, which the log start never passes).
        if offsets.high_watermark < offset || store.advance_log_start(id, offset).is_err() {
            all = false;
        }
    }
    if all {
        APPLIED.with(|applied| applied.borrow_mut().insert(group, version));
    }
}

#[cfg(test)]
mod tests {
    use super::{decode, encode};
    use crate::ids::{Offset, PartitionId};

    #[test]
    fn the_moves_section_round_trips_and_a_short_one_is_refused() {
        let moves = vec![
            (PartitionId(7), Offset(10)),
            (PartitionId(1 << 31), Offset(3)),
        ];
        let mut answer = Vec::new();
        encode(42, &moves, &mut answer);
        answer.extend_from_slice(b"frames");
        let (version, decoded, rest) = decode(&answer).unwrap();
        assert_eq!((version, decoded, rest), (42, moves, &b"frames"[..]));
        assert!(decode(&answer[..20]).is_err());
        // A count far beyond the bytes: refused, nothing sized by it.
        let mut lying = Vec::new();
        encode(1, &[], &mut lying);
        lying[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode(&lying).is_err());
    }
}

//! A store's leader-epoch history (Kafka's leader-epoch checkpoint, KIP-101
//! and KIP-279, kept per shard-group log rather than per partition): which
//! leader epoch wrote the log from which position on.
//!
//! A replica that starts following a new leader asks it where its own last
//! epoch ends in the leader's history ([`LeaderEpochs::end_of`]) and cuts
//! its log there when it holds more, so that replicas never diverge after a
//! failover (ARCHITECTURE.md, "Cluster II design: truncation on
//! divergence"). The file is `<store root>/leader-epochs`, a text line per
//! epoch (`<epoch> <start position>`), replaced atomically.

use std::path::Path;

use thiserror::Error;

use super::durable_file::write_atomic;
use crate::ids::LogPosition;

pub const LEADER_EPOCHS_FILE: &str = "leader-epochs";
const HEADER: &str = "sluice-leader-epochs 1";

#[derive(Debug, Error)]
pub enum LeaderEpochsError {
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is damaged ({reason}); it is rebuilt from the leader when this replica follows"
    )]
    Corrupt {
        path: std::path::PathBuf,
        reason: String,
    },
}

/// (epoch, first position it wrote), epochs and positions ascending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderEpochs {
    entries: Vec<(i32, LogPosition)>,
}

impl Default for LeaderEpochs {
    /// Every shard group starts at epoch 0 with its preferred leader.
    fn default() -> Self {
        LeaderEpochs {
            entries: vec![(0, LogPosition::ZERO)],
        }
    }
}

impl LeaderEpochs {
    /// The entries, checked: epochs strictly rising, positions not falling.
    pub fn from_entries(entries: Vec<(i32, LogPosition)>) -> Result<LeaderEpochs, String> {
        if entries.is_empty() {
            return Err("no epoch".to_owned());
        }
        for pair in entries.windows(2) {
            let ((epoch, start), (next, next_start)) = (pair[0], pair[1]);
            if next <= epoch || next_start < start {
                return Err(format!(
                    "epoch {next} at {next_start} follows epoch {epoch} at {start}"
                ));
            }
        }
        Ok(LeaderEpochs { entries })
    }

    pub fn entries(&self) -> &[(i32, LogPosition)] {
        &self.entries
    }

    /// The last epoch and where it started.
    pub fn latest(&self) -> (i32, LogPosition) {
        *self.entries.last().expect("a history holds an epoch")
    }

    /// Where `epoch` ends in this history: the start of the first later
    /// epoch, or `log_end` when none is later (Kafka's
    /// OffsetsForLeaderEpoch answer, by log position). An epoch this
    /// history lacks ends where the next one it holds starts.
    pub fn end_of(&self, epoch: i32, log_end: LogPosition) -> LogPosition {
        self.entries
            .iter()
            .find(|(later, _)| *later > epoch)
            .map_or(log_end, |&(_, start)| start.min(log_end))
    }

    /// This log leads from `at` on at `epoch`: epochs said to start past
    /// `at` (adopted from a leader this copy never caught up with) are
    /// dropped. An epoch no later than the last is a no-op.
    pub fn begin(&mut self, epoch: i32, at: LogPosition) {
        self.entries.retain(|&(_, start)| start <= at);
        if self.entries.is_empty() {
            self.entries.push((0, LogPosition::ZERO));
        }
        if epoch > self.latest().0 {
            self.entries.push((epoch, at));
        }
    }

    /// Read the history in `dir`; the default one when there is none.
    pub fn load(dir: &Path) -> Result<LeaderEpochs, LeaderEpochsError> {
        let path = dir.join(LEADER_EPOCHS_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(LeaderEpochs::default());
            }
            Err(source) => return Err(LeaderEpochsError::Io { path, source }),
        };
        let corrupt = |reason: String| LeaderEpochsError::Corrupt {
            path: path.clone(),
            reason,
        };
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err(corrupt(format!("its first line is not `{HEADER}`")));
        }
        let mut entries = Vec::new();
        for line in lines {
            let parsed = line.split_once(' ').and_then(|(epoch, start)| {
                Some((epoch.parse::<i32>().ok()?, LogPosition(start.parse().ok()?)))
            });
            entries.push(parsed.ok_or_else(|| corrupt(format!("line `{line}`")))?);
        }
        LeaderEpochs::from_entries(entries).map_err(corrupt)
    }

    /// Write the history into `dir` durably (temporary file, fsync,
    /// rename, directory fsync).
    pub fn store(&self, dir: &Path) -> Result<(), LeaderEpochsError> {
        let mut text = format!("{HEADER}\n");
        for (epoch, start) in &self.entries {
            text.push_str(&format!("{epoch} {}\n", start.0));
        }
        let path = dir.join(LEADER_EPOCHS_FILE);
        write_atomic(&path, text.as_bytes())
            .map_err(|source| LeaderEpochsError::Io { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(entries: &[(i32, u64)]) -> LeaderEpochs {
        LeaderEpochs::from_entries(
            entries
                .iter()
                .map(|&(epoch, start)| (epoch, LogPosition(start)))
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn an_epoch_ends_where_the_next_one_it_knows_starts() {
        let leader = history(&[(0, 0), (1, 800), (4, 1200)]);
        let end = LogPosition(5000);
        assert_eq!(leader.end_of(0, end), LogPosition(800));
        assert_eq!(leader.end_of(1, end), LogPosition(1200));
        // An epoch it never saw (another copy led it alone) ends where
        // the next one it holds starts.
        assert_eq!(leader.end_of(2, end), LogPosition(1200));
        assert_eq!(leader.end_of(4, end), end);
        assert_eq!(leader.end_of(9, end), end);
    }

    #[test]
    fn leading_drops_epochs_said_to_start_past_the_log_end() {
        let mut copy = history(&[(0, 0), (1, 800), (3, 1500)]);
        copy.begin(5, LogPosition(1000));
        assert_eq!(copy, history(&[(0, 0), (1, 800), (5, 1000)]));
        copy.begin(5, LogPosition(1000));
        assert_eq!(copy, history(&[(0, 0), (1, 800), (5, 1000)]));
    }

    #[test]
    fn a_history_survives_a_round_trip_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            LeaderEpochs::load(dir.path()).unwrap(),
            LeaderEpochs::default()
        );
        let saved = history(&[(0, 0), (2, 4096)]);
        saved.store(dir.path()).unwrap();
        assert_eq!(LeaderEpochs::load(dir.path()).unwrap(), saved);
        std::fs::write(
            dir.path().join(LEADER_EPOCHS_FILE),
            format!("{HEADER}\n2 10\n1 20\n"),
        )
        .unwrap();
        assert!(LeaderEpochs::load(dir.path()).is_err());
    }
}

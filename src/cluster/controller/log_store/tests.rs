//! The controller log against openraft's own storage suite, and what
//! survives a reopen (issue 15, item 2: the controller's log is durable in
//! each node's data directory).

use std::future::Future;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    BasicNode, CommittedLeaderId, EntryPayload, ErrorSubject, ErrorVerb, LogId, RaftLogReader,
    RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use tempfile::TempDir;

use super::segment::{self, FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use super::*;
use crate::cluster::controller::{ControllerCommand, ControllerOutcome};

// ---- openraft's suite ----------------------------------------------------

/// A state machine that applies nothing but tracks what the suite checks:
/// the last applied log id and membership, and snapshots of those as JSON.
#[derive(Default)]
struct AppliedOnly {
    state: AppliedState,
    snapshot: Arc<Mutex<Option<StoredSnapshot>>>,
}

#[derive(Clone, Default, Serialize, Deserialize)]
struct AppliedState {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
}

#[derive(Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

struct AppliedOnlySnapshotBuilder {
    state: AppliedState,
    snapshot: Arc<Mutex<Option<StoredSnapshot>>>,
}

fn state_machine_error(error: &serde_json::Error) -> StorageError<NodeId> {
    StorageError::from(StorageIOError::new(
        ErrorSubject::StateMachine,
        ErrorVerb::Read,
        error,
    ))
}

impl RaftSnapshotBuilder<ControllerTypes> for AppliedOnlySnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<ControllerTypes>, StorageError<NodeId>> {
        let data = serde_json::to_vec(&self.state).map_err(|error| state_machine_error(&error))?;
        let meta = SnapshotMeta {
            last_log_id: self.state.last_applied,
            last_membership: self.state.membership.clone(),
            snapshot_id: format!("{:?}", self.state.last_applied),
        };
        *self.snapshot.lock().expect("test lock") = Some(StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        });
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<ControllerTypes> for AppliedOnly {
    type SnapshotBuilder = AppliedOnlySnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        Ok((self.state.last_applied, self.state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ControllerOutcome>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut outcomes = Vec::new();
        for entry in entries {
            self.state.last_applied = Some(entry.log_id);
            if let EntryPayload::Membership(membership) = entry.payload {
                self.state.membership = StoredMembership::new(Some(entry.log_id), membership);
            }
            outcomes.push(ControllerOutcome::default());
        }
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> AppliedOnlySnapshotBuilder {
        AppliedOnlySnapshotBuilder {
            state: self.state.clone(),
            snapshot: Arc::clone(&self.snapshot),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        self.state = serde_json::from_slice(&data).map_err(|error| state_machine_error(&error))?;
        *self.snapshot.lock().expect("test lock") = Some(StoredSnapshot {
            meta: meta.clone(),
            data,
        });
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<ControllerTypes>>, StorageError<NodeId>> {
        let stored = self.snapshot.lock().expect("test lock").clone();
        Ok(stored.map(|stored| Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}

/// Each suite test gets a log store in a fresh data directory.
struct FreshDataDir;

impl StoreBuilder<ControllerTypes, LogStore, AppliedOnly, TempDir> for FreshDataDir {
    async fn build(&self) -> Result<(TempDir, LogStore, AppliedOnly), StorageError<NodeId>> {
        let data_dir = tempfile::tempdir().map_err(|error| {
            StorageError::from_io_error(ErrorSubject::Store, ErrorVerb::Write, error)
        })?;
        let store = LogStore::open(&LogStore::dir_in(data_dir.path()))
            .map_err(|error| storage_error(ErrorSubject::Store, ErrorVerb::Read, &error))?;
        Ok((data_dir, store, AppliedOnly::default()))
    }
}

#[test]
fn passes_openraft_storage_suite() {
    Suite::test_all(FreshDataDir).expect("openraft's storage suite");
}

// ---- reopen ---------------------------------------------------------------

fn block_on<F: Future>(future: F) -> F::Output {
    futures_executor::block_on(future)
}

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

/// A normal entry whose command names its index, so reads can be checked.
fn entry(term: u64, index: u64) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(ControllerCommand::CreateCluster {
            cluster_id: format!("cluster-{index}"),
            nodes: vec![1, 2, 3],
            shards: 2,
            replication_factor: 3,
        }),
    }
}

fn entries(term: u64, indexes: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    indexes.map(|index| entry(term, index)).collect()
}

fn append(store: &mut LogStore, entries: Vec<Entry>) {
    block_on(store.blocking_append(entries)).expect("append");
}

fn read_all(store: &mut LogStore) -> Vec<Entry> {
    block_on(store.try_get_log_entries(..)).expect("read")
}

fn indexes(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|entry| entry.log_id.index).collect()
}

fn open(dir: &Path) -> LogStore {
    LogStore::open(dir).expect("open")
}

/// A store whose segments roll after a few entries, to test several files.
fn open_small_segments(dir: &Path) -> LogStore {
    LogStore::open_with_segment_target(dir, 300).expect("open")
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list")
        .map(|dir_entry| dir_entry.expect("list").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "log"))
        .collect();
    files.sort();
    files
}

/// Byte offsets of the frames in a segment file.
fn frame_offsets(path: &Path) -> Vec<u64> {
    let bytes = std::fs::read(path).expect("read segment");
    let scan = segment::scan(&bytes);
    assert_eq!(scan.stop, None, "{} is clean", path.display());
    scan.frames.iter().map(|frame| frame.offset).collect()
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).expect("read segment");
    bytes[offset as usize] ^= 0x5a;
    std::fs::write(path, bytes).expect("write segment");
}

#[test]
fn entries_vote_committed_and_purge_survive_a_reopen() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let dir = LogStore::dir_in(data_dir.path());
    {
        let mut store = open(&dir);
        append(&mut store, entries(1, 0..=4));
        append(&mut store, entries(2, 5..=7));
        block_on(store.save_vote(&Vote::new_committed(2, 3))).expect("vote");
        block_on(store.save_committed(Some(log_id(2, 6)))).expect("committed");
        block_on(store.purge(log_id(1, 2))).expect("purge");
    }
    let mut store = open(&dir);
    let read = read_all(&mut store);
    assert_eq!(read, [entries(1, 3..=4), entries(2, 5..=7)].concat());
    assert_eq!(
        block_on(store.read_vote()).expect("vote"),
        Some(Vote::new_committed(2, 3))
    );
    assert_eq!(
        block_on(store.read_committed()).expect("committed"),
        Some(log_id(2, 6))
    );
    let state = block_on(store.get_log_state()).expect("state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 2)));
    assert_eq!(state.last_log_id, Some(log_id(2, 7)));
    // The reopened store appends where the log ended.
    append(&mut store, entries(2, 8..=8));
    drop(store);
    assert_eq!(indexes(&read_all(&mut open(&dir))), [3, 4, 5, 6, 7, 8]);
}

#[test]
fn a_purge_past_the_last_entry_leaves_an_empty_log_that_continues_after_it() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let dir = LogStore::dir_in(data_dir.path());
    {
        let mut store = open(&dir);
        append(&mut store, entries(1, 0..=4));
        block_on(store.purge(log_id(3, 20))).expect("purge");
        assert!(segment_files(&dir).is_empty(), "every segment was purged");
    }
    let mut store = open(&dir);
    let state = block_on(store.get_log_state()).expect("state");
    assert_eq!(state.last_purged_log_id, Some(log_id(3, 20)));
    assert_eq!(state.last_log_id, Some(log_id(3, 20)));
    assert!(read_all(&mut store).is_empty());
    let out_of_order = block_on(store.blocking_append(entries(3, 22..=22)));
    assert!(out_of_order.is_err(), "entry 22 does not follow 20");
    append(&mut store, entries(3, 21..=21));
    drop(store);
    assert_eq!(read_all(&mut open(&dir)), entries(3, 21..=21));
}

#[test]
fn entries_at_or_below_the_last_purged_one_are_skipped() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let dir = LogStore::dir_in(data_dir.path());
    let mut store = open(&dir);
    block_on(store.purge(log_id(1, 3))).expect("purge");
    append(&mut store, entries(1, 2..=5));
    assert_eq!(indexes(&read_all(&mut store)), [4, 5]);
    drop(store);
    assert_eq!(indexes(&read_all(&mut open(&dir))), [4, 5]);
}

#[test]
fn purge_deletes_the_segments_holding_only_purged_entries() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let dir = LogStore::dir_in(data_dir.path());
    let mut store = open_small_segments(&dir);
    for index in 0..=9 {
        append(&mut store, entries(1, index..=index));
    }
    let before = segment_files(&dir);
    assert!(
        before.len() >= 3,
        "entries rolled into segments: {before:?}"
    );
    block_on(store.purge(log_id(1, 6))).expect("purge");
    let after = segment_files(&dir);
    assert!(after.len() < before.len(), "whole purged segments deleted");
    let first_kept = segment::parse_segment_file_name(
        after[0]
            .file_name()
            .and_then(|name| name.to_str())
            .expect("name"),
    )
    .expect("segment name");
    assert!(first_kept <= 7, "the segment holding entry 7 is kept");
    drop(store);
    let mut store = open_small_segments(&dir);
    assert_eq!(indexes(&read_all(&mut store)), [7, 8, 9]);
}

#[test]
fn a_purge_cut_short_before_deleting_segments_is_finished_at_open() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let dir = LogStore::dir_in(data_dir.path());
    {
        let mut store = open_small_segments(&dir);
        for index in 0..=9 {
            append(&mut store, entries(1, index..=index));
        }
    }
    let before = segment_files(&dir);
    // What a crash right after the purge record leaves.
    let purged = serde_json::to_vec(&log_id(1, 6)).expect("json");
    write_atomic(&dir.join(PURGED_FILE), &purged).expect("purged file");
    let mut store = open_small_segments(&dir);
    assert_eq!(indexes(&read_all(&mut store)), [7, 8, 9]);
    assert!(segment_files(&dir).len() < before.len());
}

#[test]
fn a_torn_last_frame_is_cut_and_the_entries_before_it_reopen() {
    enum Tear {
        CutShort,
        BadCrc,
        Zeros,
    }
    for tear in [Tear::CutShort, Tear::BadCrc, Tear::Zeros] {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let dir = LogStore::dir_in(data_dir.path());
        {
            let mut store = open(&dir);
            append(&mut store, entries(1, 0..=2));
        }
        let path = segment_files(&dir).pop().expect("a segment");
        let offsets = frame_offsets(&path);
        let len = std::fs::metadata(&path).expect("stat").len();
        match tear {
            Tear::CutShort => {
                let file = OpenOptions::new().write(true).open(&path).expect("open");
                file.set_len(len - 3).expect("cut");
            }
            Tear::BadCrc => flip_byte(&path, len - 2),
            Tear::Zeros => {
                let file = OpenOptions::new().write(true).open(&path).expect("open");
                file.set_len(len + 100).expect("extend");
            }
        }
        let kept = if matches!(tear, Tear::Zeros) { 3 } else { 2 };
        let mut store = open(&dir);
        assert_eq!(read_all(&mut store), entries(1, 0..=kept - 1));
        let cut_at = if matches!(tear, Tear::Zeros) {
            len
        } else {
            offsets[2]
        };
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), cut_at);
        // Appends continue on a clean end, and read back after a reopen.
        append(&mut store, entries(2, kept..=kept + 1));
        drop(store);
        assert_eq!(
            read_all(&mut open(&dir)),
            [entries(1, 0..=kept - 1), entries(2, kept..=kept + 1)].concat()
        );
    }
}

#[test]
fn a_segment_with_only_a_torn_first_frame_is_removed() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let dir = LogStore::dir_in(data_dir.path());
    {
        let mut store = open_small_segments(&dir);
        for index in 0..=4 {
            append(&mut store, entries(1, index..=index));
        }
    }
    let files = segment_files(&dir);
    let last = files.last().expect("a segment");
    let first_in_last = segment::parse_segment_file_name(
        last.file_name()
            .and_then(|name| name.to_str())
            .expect("name"),
    )
    .expect("segment name");
    let file = OpenOptions::new().write(true).open(last).expect("open");
    file.set_len((SEGMENT_HEADER_BYTES + FRAME_HEADER_BYTES + 2) as u64)
        .expect("cut");
    let mut store = open_small_segments(&dir);
    assert_eq!(
        indexes(&read_all(&mut store)),
        (0..first_in_last).collect::<Vec<_>>()
    );
    assert!(!last.exists(), "the torn segment is gone");
    append(&mut store, entries(2, first_in_last..=first_in_last));
    drop(store);
    assert_eq!(
        read_all(&mut open_small_segments(&dir)).len() as u64,
        first_in_last + 1
    );
}

#[test]
fn a_crc_mismatch_in_a_middle_frame_is_an_error_naming_the_file() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let dir = LogStore::dir_in(data_dir.path());
    {
        let mut store = open(&dir);
        append(&mut store, entries(1, 0..=2));
    }
    let path = segment_files(&dir).pop().expect("a segment");
    let middle = frame_offsets(&path)[1];
    flip_byte(&path, middle + FRAME_HEADER_BYTES as u64 + 1);
    let Err(error) = LogStore::open(&dir) else {
        panic!("a damaged middle frame must not open");
    };
    let LogStoreError::Damaged {
        path: named,
        offset,
        damage,
    } = &error
    else {
        panic!("expected damage, got {error}");
    };
    assert_eq!(named, &path);
    assert_eq!(*offset, middle);
    assert!(matches!(damage, FrameDamage::CrcMismatch { .. }));
    assert!(error.to_string().contains(&path.display().to_string()));
    assert_eq!(frame_offsets_unchecked(&path), 3, "nothing was cut");
}

/// How many frames the file still holds, good or not (the scan stops at the
/// bad one, so count the frames by their lengths).
fn frame_offsets_unchecked(path: &Path) -> usize {
    let bytes = std::fs::read(path).expect("read segment");
    let mut offset = SEGMENT_HEADER_BYTES;
    let mut frames = 0;
    while offset + FRAME_HEADER_BYTES <= bytes.len() {
        let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"));
        offset += FRAME_HEADER_BYTES + len as usize;
        frames += 1;
    }
    frames
}

#[test]
fn a_torn_end_of_a_segment_before_the_last_is_an_error() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let dir = LogStore::dir_in(data_dir.path());
    {
        let mut store = open_small_segments(&dir);
        for index in 0..=6 {
            append(&mut store, entries(1, index..=index));
        }
    }
    let files = segment_files(&dir);
    assert!(files.len() >= 2);
    let len = std::fs::metadata(&files[0]).expect("stat").len();
    let file = OpenOptions::new()
        .write(true)
        .open(&files[0])
        .expect("open");
    file.set_len(len - 3).expect("cut");
    let Err(error) = LogStore::open(&dir) else {
        panic!("a damaged earlier segment must not open");
    };
    assert!(
        matches!(&error, LogStoreError::Damaged { path, .. } if path == &files[0]),
        "{error}"
    );
}

#[test]
fn a_missing_middle_segment_is_an_error() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let dir = LogStore::dir_in(data_dir.path());
    {
        let mut store = open_small_segments(&dir);
        for index in 0..=9 {
            append(&mut store, entries(1, index..=index));
        }
    }
    let files = segment_files(&dir);
    assert!(files.len() >= 3);
    std::fs::remove_file(&files[1]).expect("remove");
    let Err(error) = LogStore::open(&dir) else {
        panic!("a log with a hole must not open");
    };
    assert!(
        matches!(&error, LogStoreError::IndexGap { path, .. } if path == &files[2]),
        "{error}"
    );
}

#[test]
fn truncate_then_reopen_shows_the_truncated_log() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let dir = LogStore::dir_in(data_dir.path());
    {
        let mut store = open_small_segments(&dir);
        for index in 0..=9 {
            append(&mut store, entries(1, index..=index));
        }
        block_on(store.truncate(log_id(1, 5))).expect("truncate");
        assert_eq!(indexes(&read_all(&mut store)), [0, 1, 2, 3, 4]);
    }
    let mut store = open_small_segments(&dir);
    assert_eq!(read_all(&mut store), entries(1, 0..=4));
    let state = block_on(store.get_log_state()).expect("state");
    assert_eq!(state.last_log_id, Some(log_id(1, 4)));
    // A new leader's entries replace the truncated ones.
    append(&mut store, entries(2, 5..=6));
    drop(store);
    let mut store = open_small_segments(&dir);
    assert_eq!(
        read_all(&mut store),
        [entries(1, 0..=4), entries(2, 5..=6)].concat()
    );
    // Truncating everything leaves no segment.
    block_on(store.truncate(log_id(1, 0))).expect("truncate");
    drop(store);
    assert!(segment_files(&dir).is_empty());
    assert!(read_all(&mut open_small_segments(&dir)).is_empty());
}

#[test]
fn reads_come_from_memory_in_any_range() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut store = open(&LogStore::dir_in(data_dir.path()));
    append(&mut store, entries(1, 0..=4));
    let mut reader = block_on(store.get_log_reader());
    let read = |range: (Bound<u64>, Bound<u64>)| {
        indexes(&block_on(reader.clone().try_get_log_entries(range)).expect("read"))
    };
    assert_eq!(read((Bound::Included(1), Bound::Excluded(3))), [1, 2]);
    assert_eq!(read((Bound::Excluded(3), Bound::Unbounded)), [4]);
    assert_eq!(
        read((Bound::Excluded(3), Bound::Excluded(3))),
        Vec::<u64>::new()
    );
    assert_eq!(
        read((Bound::Included(4), Bound::Excluded(2))),
        Vec::<u64>::new()
    );
    assert_eq!(
        read((Bound::Excluded(u64::MAX), Bound::Unbounded)),
        Vec::<u64>::new()
    );
    assert_eq!(
        read((Bound::Unbounded, Bound::Excluded(0))),
        Vec::<u64>::new()
    );
    let all = block_on(reader.try_get_log_entries(0..=u64::MAX)).expect("read");
    assert_eq!(all, entries(1, 0..=4));
}

#[test]
fn an_append_out_of_order_is_refused_and_reported_to_the_callback() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut store = open(&LogStore::dir_in(data_dir.path()));
    append(&mut store, entries(1, 0..=2));
    let refused = block_on(store.blocking_append(entries(1, 4..=4)));
    assert!(refused.is_err());
    assert_eq!(indexes(&read_all(&mut store)), [0, 1, 2]);
}

#[test]
fn after_a_failed_write_the_store_refuses_writes() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let dir = LogStore::dir_in(data_dir.path());
    let mut store = open(&dir);
    append(&mut store, entries(1, 0..=1));
    // The directory vanishing makes the next atomic write fail.
    std::fs::remove_dir_all(&dir).expect("remove");
    let error = store
        .save_vote_durably(&Vote::new(1, 1))
        .expect_err("the vote cannot be written");
    assert!(matches!(error, LogStoreError::Write { .. }), "{error}");
    std::fs::create_dir_all(&dir).expect("recreate");
    let error = store
        .append_durably(entries(1, 2..=2))
        .expect_err("poisoned");
    assert!(matches!(error, LogStoreError::Poisoned { .. }), "{error}");
}

#[test]
fn a_damaged_vote_file_is_an_error_naming_it() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let dir = LogStore::dir_in(data_dir.path());
    drop(open(&dir));
    std::fs::write(dir.join(VOTE_FILE), b"{\"leader_id\":").expect("write");
    let Err(error) = LogStore::open(&dir) else {
        panic!("a damaged vote must not open");
    };
    assert!(
        matches!(&error, LogStoreError::DecodeFile { path, .. } if path == &dir.join(VOTE_FILE)),
        "{error}"
    );
}

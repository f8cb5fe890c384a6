//! A simulated disk for the commit log: power loss and I/O errors on demand.
//!
//! Ops are queued at submit and performed at reap, a random subset at a
//! time in random order. That is how a real queue completes them, and it
//! makes the log's watermarks cope with out-of-order completions. Writes go
//! to the real file at once (readers see written data), but the sectors they
//! change are remembered until an fdatasync of that file is performed.
//! [`SimDevice::power_cut`] then reverts or keeps each such 512-byte sector at
//! random (sector writes are atomic; whole writes are not) and kills the device.
//! Anything acknowledged as fsynced must survive that.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use sluice::io::{EventFd, LogFile, LogIo, LogIoError, LogOp, LogOpDone, SubmitError};

const SECTOR_BYTES: u64 = 512;

#[derive(Default)]
struct DeviceState {
    /// Per file: sector index -> its content at the last fdatasync.
    durable_sectors: HashMap<PathBuf, BTreeMap<u64, Vec<u8>>>,
    writes: usize,
    syncs: usize,
    fail_write_at: Option<usize>,
    fail_sync_at: Option<usize>,
    dir_syncs: usize,
    fail_dir_sync_at: Option<usize>,
    dead: bool,
    random: u64,
}

#[derive(Clone, Default)]
pub struct SimDevice {
    state: Rc<RefCell<DeviceState>>,
}

impl SimDevice {
    pub fn new(seed: u64) -> SimDevice {
        let device = SimDevice::default();
        device.state.borrow_mut().random = seed | 1;
        device
    }

    /// A store of the test geometry in `dir` whose commit log runs on this
    /// device.
    pub fn open_store(&self, dir: &std::path::Path) -> Rc<sluice::storage::ShardStore> {
        let options = crate::support::options(
            dir,
            crate::support::small_storage(sluice::config::WriteMode::Direct),
            sluice::io::IoBackend::Epoll,
        );
        let hooks = sluice::storage::StoreHooks {
            log_io: Some(self.log_io()),
            disk_probe: None,
        };
        sluice::storage::ShardStore::open_with(options, hooks).unwrap()
    }

    pub fn log_io(&self) -> Box<dyn LogIo> {
        Box::new(SimLogIo {
            device: self.clone(),
            eventfd: EventFd::new().unwrap(),
            queued: Vec::new(),
        })
    }

    /// Make the `n`th write from now fail with EIO.
    pub fn fail_write_after(&self, n: usize) {
        let mut state = self.state.borrow_mut();
        state.fail_write_at = Some(state.writes + n);
    }

    /// Make the `n`th fdatasync from now fail with EIO.
    pub fn fail_sync_after(&self, n: usize) {
        let mut state = self.state.borrow_mut();
        state.fail_sync_at = Some(state.syncs + n);
    }

    /// Make the `n`th directory fsync from now (a segment roll) fail with EIO.
    pub fn fail_dir_sync_after(&self, n: usize) {
        let mut state = self.state.borrow_mut();
        state.fail_dir_sync_at = Some(state.dir_syncs + n);
    }

    /// Sectors of `path` written since its last performed fdatasync.
    pub fn unsynced_sectors(&self, path: &std::path::Path) -> usize {
        self.state
            .borrow()
            .durable_sectors
            .get(path)
            .map_or(0, BTreeMap::len)
    }

    /// Lose power: every sector not covered by a performed fdatasync keeps
    /// its new content or reverts to its durable content, at random. The
    /// device performs nothing afterwards.
    pub fn power_cut(&self) -> usize {
        let mut state = self.state.borrow_mut();
        state.dead = true;
        let mut reverted = 0;
        let durable = std::mem::take(&mut state.durable_sectors);
        for (path, sectors) in durable {
            // The log's descriptor may be O_DIRECT; restore through our own.
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            for (sector, old) in sectors {
                if next(&mut state.random).is_multiple_of(2) {
                    file.write_all_at(&old, sector * SECTOR_BYTES).unwrap();
                    reverted += 1;
                }
            }
        }
        reverted
    }
}

fn next(random: &mut u64) -> u64 {
    *random ^= *random << 13;
    *random ^= *random >> 7;
    *random ^= *random << 17;
    *random
}

struct SimLogIo {
    device: SimDevice,
    eventfd: EventFd,
    queued: Vec<(u64, LogOp)>,
}

impl SimLogIo {
    /// Perform `op`; `split` performs only the write of a synced write.
    fn perform(&self, op: &LogOp, split: bool) -> Result<(), LogIoError> {
        let mut state = self.device.state.borrow_mut();
        match op {
            LogOp::Write(write) => {
                state.writes += 1;
                if state.fail_write_at == Some(state.writes) {
                    let error = io::Error::from_raw_os_error(libc::EIO);
                    return Err(LogIoError::new(
                        "write",
                        &write.file,
                        write.file_offset,
                        write.buf_range.len(),
                        error,
                    ));
                }
                let bytes = &write.buf.as_slice()[write.buf_range.clone()];
                remember_old_sectors(
                    &mut state,
                    &write.file,
                    write.file_offset,
                    bytes.len() as u64,
                );
                write
                    .file
                    .file
                    .write_all_at(bytes, write.file_offset)
                    .unwrap();
                if write.sync && !split {
                    return sync(&mut state, &write.file);
                }
                Ok(())
            }
            LogOp::Sync { file } => sync(&mut state, file),
        }
    }
}

/// Record the durable content of every sector a write is about to change.
/// Read through our own buffered descriptor: the log's may be O_DIRECT,
/// which refuses unaligned buffers.
fn remember_old_sectors(state: &mut DeviceState, file: &Arc<LogFile>, offset: u64, len: u64) {
    let sectors = state.durable_sectors.entry(file.path.clone()).or_default();
    let reader = std::fs::File::open(&file.path).unwrap();
    for sector in offset / SECTOR_BYTES..(offset + len).div_ceil(SECTOR_BYTES) {
        sectors.entry(sector).or_insert_with(|| {
            let mut old = vec![0u8; SECTOR_BYTES as usize];
            let read = reader.read_at(&mut old, sector * SECTOR_BYTES).unwrap();
            assert!(
                read == old.len() || read == 0,
                "short read of sector {sector}"
            );
            old
        });
    }
}

fn sync(state: &mut DeviceState, file: &LogFile) -> Result<(), LogIoError> {
    state.syncs += 1;
    if state.fail_sync_at == Some(state.syncs) {
        return Err(LogIoError::new(
            "fdatasync",
            file,
            0,
            0,
            io::Error::from_raw_os_error(libc::EIO),
        ));
    }
    state.durable_sectors.remove(&file.path);
    Ok(())
}

impl LogIo for SimLogIo {
    fn makes_segments_ahead(&self) -> bool {
        false
    }

    fn submit(&mut self, token: u64, op: LogOp) -> Result<(), SubmitError> {
        self.queued.push((token, op));
        self.eventfd.signal();
        Ok(())
    }

    fn flush_submissions(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn sync_dir(&mut self, dir: &std::path::Path) -> io::Result<()> {
        let mut state = self.device.state.borrow_mut();
        state.dir_syncs += 1;
        if state.fail_dir_sync_at == Some(state.dir_syncs) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        std::fs::File::open(dir)?.sync_all()
    }

    fn reap(&mut self, out: &mut Vec<LogOpDone>) {
        if self.device.state.borrow().dead || self.queued.is_empty() {
            return;
        }
        // Perform a random, non-empty subset, in random order.
        let mut index = 0;
        let mut performed_any = false;
        while index < self.queued.len() {
            let pick = !next(&mut self.device.state.borrow_mut().random).is_multiple_of(3);
            if pick || (!performed_any && index + 1 == self.queued.len()) {
                let swap_with =
                    next(&mut self.device.state.borrow_mut().random) as usize % self.queued.len();
                self.queued.swap(index, swap_with.max(index));
                let (token, op) = self.queued.remove(index);
                // Half the synced writes report their write first and run
                // their fdatasync later, in any order with other ops, as
                // the real backends may (`DoneStage::Written`).
                let split = matches!(&op, LogOp::Write(write) if write.sync)
                    && next(&mut self.device.state.borrow_mut().random).is_multiple_of(2);
                let result = self.perform(&op, split);
                match op {
                    LogOp::Write(write) if split && result.is_ok() => {
                        let file = Arc::clone(&write.file);
                        out.push(LogOpDone {
                            token,
                            buf: Some(write.buf),
                            result,
                            stage: sluice::io::DoneStage::Written,
                        });
                        self.queued.push((token, LogOp::Sync { file }));
                    }
                    op => out.push(LogOpDone {
                        token,
                        buf: op.into_buf(),
                        result,
                        stage: sluice::io::DoneStage::Complete,
                    }),
                }
                performed_any = true;
            } else {
                index += 1;
            }
        }
        if !self.queued.is_empty() {
            self.eventfd.signal();
        }
    }

    fn ready_fd(&self) -> &EventFd {
        &self.eventfd
    }

    fn inflight(&self) -> usize {
        self.queued.len()
    }
}

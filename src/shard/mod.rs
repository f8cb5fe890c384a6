//! The thread-per-core shard runtime.
//!
//! [`ShardRuntime::start`] spawns one OS thread per shard, pins it to a core
//! with `core_affinity`, builds a compio runtime on the chosen driver (io_uring,
//! or epoll as the fallback) and opens the shard's storage (running recovery).
//! Only then does it report ready. Shards share nothing on the data path; they
//! talk through bounded mailboxes ([`mailbox::Shards`]).
//! [`ShardRuntime::shutdown`] asks every shard to flush, fsync and checkpoint,
//! then joins the threads.

pub mod local_sync;
pub mod mailbox;
pub mod request_clock;
pub mod signals;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use compio::driver::{DriverType, ProactorBuilder};
use thiserror::Error;

use crate::config::Config;
use crate::data_dir::DataDir;
use crate::error_chain::error_chain;
use crate::ids::ShardId;
use crate::io::IoBackend;
use crate::storage::{AppendError, OpenError, RecoveryReport, ShardStore, StoreOptions};
pub use mailbox::{MAILBOX_CAPACITY, Message, ShardGone, Shards};

/// Entries in each shard's compio ring (sockets, timers, polls).
const RING_ENTRIES: u32 = 1024;

/// Why a [`ShardService`] did not start on a shard: the service's own
/// error, kept whole (with its sources) for the startup failure's log line.
pub type ServiceError = Box<dyn std::error::Error + Send + Sync>;

/// Something that runs on every shard (the Kafka front end): started on each
/// shard thread once its storage is open, before the shard reports ready.
pub trait ShardService: Send + Sync + 'static {
    /// Spawn this shard's tasks; they are cancelled before the shard's storage
    /// shuts down. An error stops the broker's start.
    fn start(
        &self,
        context: &Rc<ShardContext>,
    ) -> Result<Vec<compio::runtime::JoinHandle<()>>, ServiceError>;
}

/// No service: storage only (tests and tools).
pub struct StorageOnly;

impl ShardService for StorageOnly {
    fn start(
        &self,
        _context: &Rc<ShardContext>,
    ) -> Result<Vec<compio::runtime::JoinHandle<()>>, ServiceError> {
        Ok(Vec::new())
    }
}

/// What a shard task can reach: its storage and the other shards.
pub struct ShardContext {
    pub id: ShardId,
    pub shards: Shards,
    /// The store in `<data_dir>/shard-<n>`: a single node's only one; in a
    /// cluster, the log of the shard group this node is the preferred
    /// leader of. Replaced when a cut reopens it ([`ShardContext::replace`]).
    home: RefCell<Rc<ShardStore>>,
    /// In a cluster, every shard-group log this shard keeps, by group
    /// number, the home store included (issue 16): the groups it leads and
    /// those it follows. Empty on a single node.
    groups: RefCell<BTreeMap<u32, Rc<ShardStore>>>,
    /// The cluster's shard-group count (`N·S`), 0 on a single node.
    group_count: Cell<u32>,
    /// The home store's group number in a cluster.
    home_group: Cell<Option<u32>>,
}

impl ShardContext {
    pub fn new(id: ShardId, store: Rc<ShardStore>, shards: Shards) -> ShardContext {
        ShardContext {
            id,
            shards,
            home: RefCell::new(store),
            groups: RefCell::new(BTreeMap::new()),
            group_count: Cell::new(0),
            home_group: Cell::new(None),
        }
    }

    /// The home store (see [`ShardContext::store_for`] for a partition's).
    pub fn store(&self) -> Rc<ShardStore> {
        Rc::clone(&self.home.borrow())
    }

    /// The store holding partition `index` of `topic`: in a cluster, its
    /// shard group's log (`partition_slot mod N·S`), whichever this shard
    /// keeps it in; the home store on a single node.
    pub fn store_for(&self, topic: &str, index: u32) -> Rc<ShardStore> {
        let count = self.group_count.get();
        if count == 0 {
            return self.store();
        }
        let group = (mailbox::partition_slot(topic, index) % u64::from(count)) as u32;
        self.group_store(group).unwrap_or_else(|| self.store())
    }

    /// How many commit logs partitions are spread over: the shards on a
    /// single node, the shard groups in a cluster.
    pub fn placement_count(&self) -> u32 {
        match self.group_count.get() {
            0 => self.shards.count() as u32,
            count => count,
        }
    }

    /// Whether partition `a` (topic, index) and partition `b` are kept in
    /// the same commit log (the same shard, or shard group in a cluster).
    pub fn same_log(&self, a: (&str, u32), b: (&str, u32)) -> bool {
        let placement = u64::from(self.placement_count());
        mailbox::partition_slot(a.0, a.1) % placement
            == mailbox::partition_slot(b.0, b.1) % placement
    }

    /// This shard's store of shard group `group`, if it keeps one.
    pub fn group_store(&self, group: u32) -> Option<Rc<ShardStore>> {
        self.groups.borrow().get(&group).cloned()
    }

    /// Every shard-group store this shard keeps, by group number.
    pub fn group_stores(&self) -> Vec<(u32, Rc<ShardStore>)> {
        self.groups
            .borrow()
            .iter()
            .map(|(group, store)| (*group, Rc::clone(store)))
            .collect()
    }

    /// A cluster of `group_count` shard groups, this shard's home store
    /// holding group `home_group`.
    pub fn join_groups(&self, group_count: u32, home_group: u32) {
        assert!(
            home_group < group_count,
            "the home group is one of the groups"
        );
        self.group_count.set(group_count);
        self.home_group.set(Some(home_group));
        let home = self.store();
        self.groups.borrow_mut().insert(home_group, home);
    }

    /// Keep `store` as group `group`'s (a follower copy opened, or a store
    /// reopened after a cut; the home store too when it is the home group).
    pub fn replace(&self, group: u32, store: Rc<ShardStore>) {
        if self.home_group.get() == Some(group) {
            *self.home.borrow_mut() = Rc::clone(&store);
        }
        self.groups.borrow_mut().insert(group, store);
    }

    /// Run `work` on `shard`: directly when that is this shard, through its
    /// mailbox otherwise.
    pub async fn run_on<F, Fut, T>(self: &Rc<Self>, shard: ShardId, work: F) -> Result<T, ShardGone>
    where
        F: FnOnce(Rc<ShardContext>) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        if shard == self.id {
            return Ok(work(Rc::clone(self)).await);
        }
        self.shards.call(shard, work).await
    }
}

/// A shard that started: where it runs and what recovery found.
#[derive(Debug, Clone)]
pub struct ShardReady {
    pub shard: ShardId,
    pub core: Option<usize>,
    pub recovery: RecoveryReport,
}

#[derive(Debug, Error)]
pub enum StartError {
    #[error("cannot spawn the thread for {shard}: {source}")]
    Spawn {
        shard: ShardId,
        #[source]
        source: std::io::Error,
    },
    #[error("{shard} failed to start: {source}")]
    Shard {
        shard: ShardId,
        #[source]
        source: ShardStartError,
    },
    #[error(
        "startup cancelled by a signal while {recovering} shard(s) were still recovering; \
         recovery resumes at the next start"
    )]
    Cancelled { recovering: usize },
}

/// Why one shard did not start.
#[derive(Debug, Error)]
pub enum ShardStartError {
    #[error("cannot start its {backend} event loop: {source}")]
    EventLoop {
        backend: IoBackend,
        #[source]
        source: std::io::Error,
    },
    /// Opening or recovering its storage failed; the error names the file.
    #[error(transparent)]
    Storage(#[from] OpenError),
    #[error("{source}")]
    Service {
        #[source]
        source: ServiceError,
    },
    /// Threads that owed an answer exited without one (a panic, already
    /// logged by the panic hook).
    #[error("{pending} shard thread(s) exited during startup without a reason")]
    ThreadsExited { pending: usize },
}

/// How often a start waiting for shards checks whether it was cancelled.
const START_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

pub struct ShardRuntime {
    shards: Shards,
    threads: Vec<JoinHandle<()>>,
    ready: Vec<ShardReady>,
}

struct ShardSpec {
    id: ShardId,
    core: Option<core_affinity::CoreId>,
    backend: IoBackend,
    options: StoreOptions,
    service: Arc<dyn ShardService>,
}

impl ShardRuntime {
    /// Start `config.shard_count()` shards over `data_dir` on `backend`.
    /// Returns when every shard has recovered and is serving.
    pub fn start(
        config: &Config,
        data_dir: &DataDir,
        backend: IoBackend,
        service: Arc<dyn ShardService>,
    ) -> Result<ShardRuntime, StartError> {
        ShardRuntime::start_cancellable(config, data_dir, backend, service, &|| false)
    }

    /// As [`ShardRuntime::start`]; `cancelled` is polled while shards
    /// recover (a termination signal). Any shard's failure, or a
    /// cancellation, stops the shards that did start and returns the error;
    /// shards still recovering are left to the process exit (recovery is
    /// safe to interrupt).
    pub fn start_cancellable(
        config: &Config,
        data_dir: &DataDir,
        backend: IoBackend,
        service: Arc<dyn ShardService>,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<ShardRuntime, StartError> {
        let count = config.shard_count();
        let cores = if config.pin_shards {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..count).map(|_| flume::bounded(MAILBOX_CAPACITY)).unzip();
        let shards = Shards::new(senders);
        let (ready_sender, ready_receiver) = mpsc::channel();
        let mut threads = Vec::with_capacity(count);
        for (index, receiver) in receivers.into_iter().enumerate() {
            let id = ShardId(index as u16);
            let mut storage = config.storage.clone();
            storage.write_mode = data_dir.write_mode();
            let spec = ShardSpec {
                id,
                core: (!cores.is_empty()).then(|| cores[index % cores.len()]),
                backend,
                options: StoreOptions {
                    shard: id,
                    data_dir: data_dir.path().to_owned(),
                    storage,
                    retention: config.retention.clone(),
                    backend,
                },
                service: Arc::clone(&service),
            };
            let shards = shards.clone();
            let ready_sender = ready_sender.clone();
            let thread = std::thread::Builder::new()
                .name(format!("sluice-{id}"))
                .spawn(move || run_shard(spec, receiver, shards, ready_sender))
                .map_err(|source| StartError::Spawn { shard: id, source })?;
            threads.push(thread);
        }
        drop(ready_sender);
        let mut runtime = ShardRuntime {
            shards,
            threads,
            ready: Vec::with_capacity(count),
        };
        let mut failure = None;
        let mut pending = count;
        while pending > 0 {
            match ready_receiver.recv_timeout(START_POLL_INTERVAL) {
                Ok(Ok(ready)) => {
                    runtime.ready.push(ready);
                    pending -= 1;
                }
                Ok(Err(failed)) => {
                    failure.get_or_insert(failed);
                    pending -= 1;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if cancelled() {
                        runtime.stop_ready();
                        return Err(StartError::Cancelled {
                            recovering: pending,
                        });
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // Every thread still owing an answer is gone (a panic).
                    failure.get_or_insert((ShardId(0), ShardStartError::ThreadsExited { pending }));
                    break;
                }
            }
        }
        if let Some((shard, source)) = failure {
            runtime.stop_ready();
            return Err(StartError::Shard { shard, source });
        }
        runtime.ready.sort_by_key(|ready| ready.shard);
        Ok(runtime)
    }

    /// Stop the shards that reported ready (a start that failed). The
    /// others either exited already or are still recovering; neither is
    /// waited for.
    fn stop_ready(self) {
        let ready: Vec<ShardId> = self.ready.iter().map(|ready| ready.shard).collect();
        let failures = stop_shards(&self.shards, &ready);
        for (shard, error) in failures {
            let reason = error_chain(&error);
            tracing::error!(%shard, %reason, "shard did not shut down cleanly");
        }
        let mut threads = self.threads;
        drop(self.shards);
        for shard in ready.iter().rev() {
            let thread = threads.remove(usize::from(shard.0));
            let _ = thread.join();
        }
    }

    pub fn shards(&self) -> &Shards {
        &self.shards
    }

    pub fn ready(&self) -> &[ShardReady] {
        &self.ready
    }

    /// Flush, fsync and checkpoint every shard, then join their threads.
    /// Returns the shards whose shutdown failed, with why.
    pub fn shutdown(self) -> Vec<(ShardId, AppendError)> {
        let ids: Vec<ShardId> = self.shards.ids().collect();
        let failures = stop_shards(&self.shards, &ids);
        drop(self.shards);
        for thread in self.threads {
            let _ = thread.join();
        }
        failures
    }
}

/// Ask each of `ids` (shards serving their mailboxes) to flush, fsync and
/// checkpoint; returns those whose shutdown failed, with why.
fn stop_shards(shards: &Shards, ids: &[ShardId]) -> Vec<(ShardId, AppendError)> {
    let (sender, receiver) = mpsc::channel();
    let mut asked = 0;
    for &shard in ids {
        if shards
            .send_blocking(shard, Message::Shutdown(sender.clone()))
            .is_ok()
        {
            asked += 1;
        }
    }
    drop(sender);
    let mut failures = Vec::new();
    for (shard, result) in receiver.iter().take(asked) {
        if let Err(error) = result {
            failures.push((shard, error));
        }
    }
    failures
}

type ReadySender = mpsc::Sender<Result<ShardReady, (ShardId, ShardStartError)>>;

fn run_shard(
    spec: ShardSpec,
    mailbox: flume::Receiver<Message>,
    shards: Shards,
    ready: ReadySender,
) {
    let id = spec.id;
    let core = spec.core.filter(|&core| {
        let pinned = core_affinity::set_for_current(core);
        if !pinned {
            tracing::warn!(shard = %id, core = core.id, "cannot pin shard thread; running unpinned");
        }
        pinned
    });
    let runtime = match build_runtime(spec.backend) {
        Ok(runtime) => runtime,
        Err(source) => {
            let backend = spec.backend;
            report_failure(&ready, id, ShardStartError::EventLoop { backend, source });
            return;
        }
    };
    runtime.block_on(async move {
        let store = match ShardStore::open(spec.options) {
            Ok(store) => store,
            Err(error) => {
                report_failure(&ready, id, error.into());
                return;
            }
        };
        let started = ShardReady {
            shard: id,
            core: core.map(|core| core.id),
            recovery: store.recovery_report().clone(),
        };
        let context = Rc::new(ShardContext::new(id, store, shards));
        let tasks = match spec.service.start(&context) {
            Ok(tasks) => tasks,
            Err(source) => {
                let _ = context.store().shutdown().await;
                report_failure(&ready, id, ShardStartError::Service { source });
                return;
            }
        };
        if ready.send(Ok(started)).is_err() {
            return;
        }
        serve_mailbox(&context, &mailbox, tasks).await;
    });
}

/// Log a shard's startup failure at once (the start may wait on other
/// shards before it reports) and hand it to the starting thread.
fn report_failure(ready: &ReadySender, id: ShardId, error: ShardStartError) {
    let reason = error_chain(&error);
    tracing::error!(shard = %id, %reason, "shard failed to start");
    let _ = ready.send(Err((id, error)));
}

async fn serve_mailbox(
    context: &Rc<ShardContext>,
    mailbox: &flume::Receiver<Message>,
    service_tasks: Vec<compio::runtime::JoinHandle<()>>,
) {
    let mut service_tasks = Some(service_tasks);
    while let Ok(message) = mailbox.recv_async().await {
        match message {
            Message::Run(job) => job(context),
            Message::Shutdown(reply) => {
                // Stop taking requests before storage stops taking appends.
                for task in service_tasks.take().into_iter().flatten() {
                    task.cancel().await;
                }
                let home = context.store();
                for (group, store) in context.group_stores() {
                    if Rc::ptr_eq(&store, &home) {
                        continue;
                    }
                    if let Err(error) = store.shutdown().await {
                        tracing::warn!(shard = %context.id, group, %error, "a shard group's copy did not shut down cleanly; recovery repairs it and its leader resends what it lacks");
                    }
                }
                let result = home.shutdown().await;
                let _ = reply.send((context.id, result));
                return;
            }
        }
    }
}

/// A compio runtime on exactly the chosen driver (no silent fallback here:
/// the backend was probed and logged once at startup).
pub fn build_runtime(backend: IoBackend) -> std::io::Result<compio::runtime::Runtime> {
    let mut proactor = ProactorBuilder::new();
    proactor.capacity(RING_ENTRIES).driver_type(match backend {
        IoBackend::IoUring => DriverType::IoUring,
        IoBackend::Epoll => DriverType::Poll,
    });
    compio::runtime::RuntimeBuilder::new()
        .with_proactor(proactor)
        .build()
}

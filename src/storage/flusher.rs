//! The shard's flusher task: drives group commit.
//!
//! It sleeps until an append kicks it, a commit-log completion arrives (the
//! storage ring's eventfd), or a deadline passes. It then reaps completions,
//! publishes the new watermarks, refills the device queue with full chunks at
//! once, yields one turn so that appends arriving in the same tick share the
//! next write, and applies the flush policy (`CommitLog::flush`). It also
//! starts the log's reservations of disk space ahead of its writes, which
//! run on a blocking thread (`CommitLog::reservation_due`), and likewise the
//! making of the tail cache's next arena (`CommitLog::tail_arena_due`).

use std::future::poll_fn;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use compio::runtime::fd::PollFd;

use super::queue_file::QueueReservation;
use super::segment::SegmentError;
use super::shard_store::{ShardStore, publish};
use super::tail_cache::prepare_arena;
use crate::io::EventFd;
use crate::shard::local_sync::{Notify, yield_now};

impl ShardStore {
    pub(super) async fn run_flusher(self: Rc<Self>) {
        let ready_fd = self.state.borrow().log.ready_fd().clone();
        let ready = match PollFd::new(ready_fd.clone()) {
            Ok(ready) => ready,
            Err(error) => {
                // Nothing would ever complete: refuse appends instead of
                // leaving their producers waiting forever.
                tracing::error!(%error, shard = %self.options.shard, "cannot watch commit-log completions");
                self.state
                    .borrow_mut()
                    .log
                    .poison_with("watching commit-log completions", error);
                self.progress.notify_all();
                return;
            }
        };
        while !self.flusher_stop.get() {
            let deadline = self.state.borrow().log.next_deadline(Instant::now());
            if wait_any(&self.flush_kick, &ready, deadline).await == Wake::Completions {
                ready_fd.drain();
            }
            self.reap();
            self.state
                .borrow_mut()
                .log
                .submit_full_chunks(Instant::now());
            // Let other ready tasks run first so their appends share this write.
            let appended = self.stats().frames_appended;
            yield_now().await;
            self.reap();
            let idle = self.stats().frames_appended == appended;
            self.state.borrow_mut().log.flush(Instant::now(), idle);
            self.start_reservation();
            self.start_queue_reservations();
            self.start_segment_ahead();
            self.start_tail_arena();
            if !idle {
                self.flush_kick.notify();
            }
        }
    }

    /// Hand the commit log's next reservation of disk space, if one is due,
    /// to a blocking thread (fallocate must not stall the shard); its
    /// outcome goes back to the log and wakes the appends waiting for it.
    fn start_reservation(self: &Rc<Self>) {
        let Some(work) = self.state.borrow_mut().log.reservation_due() else {
            return;
        };
        let blocking = work.clone();
        self.off_shard(
            move || blocking.run(),
            || Err(std::io::Error::other("the reservation task was cancelled")),
            move |store, result| store.state.borrow_mut().log.reservation_done(&work, result),
        );
    }

    /// Hand the making of the next segment, if it is due, to a blocking
    /// thread (`segment_ahead.rs`); a roll waiting for it is woken with the
    /// appends waiting for buffers.
    fn start_segment_ahead(self: &Rc<Self>) {
        let Some(work) = self.state.borrow_mut().log.segment_ahead_due() else {
            return;
        };
        let blocking = work.clone();
        let dir = work.dir.clone();
        self.off_shard(
            move || blocking.run(),
            move || {
                Err(SegmentError::Create {
                    path: dir,
                    source: std::io::Error::other("making the next segment was cancelled"),
                })
            },
            move |store, result| {
                let mut state = store.state.borrow_mut();
                state.log.segment_ahead_done(&work, result);
            },
        );
    }

    /// Hand the making of the tail cache's next arena, if one is due, to a
    /// blocking thread, so that its page faults are not taken inside an
    /// append (`tail_cache.rs`).
    fn start_tail_arena(self: &Rc<Self>) {
        let Some(bytes) = self.state.borrow_mut().log.tail_arena_due() else {
            return;
        };
        self.off_shard(
            move || Some(prepare_arena(bytes)),
            || None,
            |store, arena| store.state.borrow_mut().log.tail_arena_done(arena),
        );
    }

    /// Hand the consume-queue reservations asked for since the last batch
    /// to a blocking thread, one batch at a time (fallocate must not stall
    /// the shard; an append that outruns them reserves for itself).
    fn start_queue_reservations(self: &Rc<Self>) {
        if self.queue_reserving.get() {
            return;
        }
        let batch = std::mem::take(&mut self.state.borrow_mut().queue_reservations);
        if batch.is_empty() {
            return;
        }
        self.queue_reserving.set(true);
        let (ids, reservations): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let reservations = Arc::new(reservations);
        let (work, cancelled) = (Arc::clone(&reservations), Arc::clone(&reservations));
        self.off_shard(
            move || work.iter().map(QueueReservation::run).collect::<Vec<_>>(),
            move || {
                let error = || Err(std::io::Error::other("the reservation task was cancelled"));
                cancelled.iter().map(|_| error()).collect()
            },
            move |store, results| {
                let mut state = store.state.borrow_mut();
                for ((id, reservation), result) in ids.iter().zip(reservations.iter()).zip(&results)
                {
                    if let Some(partition) = state.partitions.get_mut(id) {
                        partition.queue.reservation_done(reservation, result);
                    }
                }
                drop(state);
                store.queue_reserving.set(false);
            },
        );
    }

    /// Run `work` on the blocking pool, then `done` on the shard with its
    /// outcome (`cancelled`'s, should the blocking task be cancelled), then
    /// wake the appends waiting for buffers or space and the flusher.
    fn off_shard<R: Send + 'static>(
        self: &Rc<Self>,
        work: impl FnOnce() -> R + Send + 'static,
        cancelled: impl FnOnce() -> R + 'static,
        done: impl FnOnce(&ShardStore, R) + 'static,
    ) {
        let store = Rc::clone(self);
        compio::runtime::spawn(async move {
            let result = match compio::runtime::spawn_blocking(work).await {
                Ok(result) => result,
                Err(error) => {
                    error.resume_unwind();
                    cancelled()
                }
            };
            done(&store, result);
            store.buffer_space.resource_freed();
            store.flush_kick.notify();
        })
        .detach();
    }

    /// Collect finished writes, publish watermarks, wake waiters.
    fn reap(&self) {
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        let free_before = state.log.io_inflight();
        let advanced = state.log.reap();
        let freed = state.log.io_inflight() < free_before;
        if advanced {
            publish(state);
        }
        drop(guard);
        if advanced {
            self.progress.notify_all();
        }
        if freed {
            self.buffer_space.resource_freed();
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wake {
    Kick,
    Completions,
    Deadline,
}

/// Wait for a kick, a completion, or the deadline, whichever comes first.
async fn wait_any(kick: &Notify, ready: &PollFd<EventFd>, deadline: Option<Instant>) -> Wake {
    let mut sleep = pin!(async move {
        match deadline {
            Some(deadline) => compio::time::sleep_until(deadline).await,
            None => std::future::pending::<()>().await,
        }
    });
    poll_fn(|cx| {
        if kick.poll_notified(cx.waker()).is_ready() {
            return Poll::Ready(Wake::Kick);
        }
        if let Poll::Ready(result) = ready.poll_read_ready(cx) {
            if let Err(error) = result {
                tracing::warn!(%error, "waiting for commit-log completions failed");
            }
            return Poll::Ready(Wake::Completions);
        }
        sleep.as_mut().poll(cx).map(|()| Wake::Deadline)
    })
    .await
}

//! Disk space reserved ahead of the commit log's write position (issue 19,
//! "first start small").
//!
//! A segment file has its full size from its creation, but only the blocks
//! the log is about to write are reserved (fallocate, see
//! [`super::segment::reserve`]). A fresh log reserves [`RESERVE_MIN_BYTES`];
//! each completed reservation doubles the step, up to
//! `storage.preallocate_bytes`, so a busy log keeps between half a step and
//! a step and a half reserved ahead of its appends, and an idle one holds
//! little. After a failed reservation (a full disk) the step starts again
//! from 1 MiB. The next step is asked for once less than half a step is left,
//! and reserved off the shard thread (the flusher hands it to a blocking
//! thread); a frame that would pass the reserved end waits for it, which
//! the `sluice_log_reserve_waits_total` counter shows.
//!
//! Invariant: no write reaches past `end` (the commit log admits a frame
//! only below it), so a reservation only ever covers bytes that hold no
//! data, which a write-zeroes reservation requires.

use crate::ids::LogPosition;

/// The first reservation of a log, and its smallest step (1 MiB).
pub const RESERVE_MIN_BYTES: u64 = 1 << 20;

/// What an append past the reserved end gets.
#[derive(Debug)]
pub enum Admit {
    /// The frame's bytes are reserved.
    Ready,
    /// A reservation covering them is asked for or in flight: wait for it.
    Wait,
    /// The last reservation failed (`(from, to, error)` in file offsets):
    /// refuse this append; the next one asks again.
    Failed(u64, u64, std::sync::Arc<std::io::Error>),
}

#[derive(Debug)]
enum State {
    Idle,
    InFlight,
    /// A failed reservation; `reported` once an append was refused for it.
    /// No new attempt starts until an append needs the space again.
    Failed {
        from: u64,
        to: u64,
        error: std::sync::Arc<std::io::Error>,
        reported: bool,
    },
}

/// The reservation state of the active segment.
#[derive(Debug)]
pub struct Reservation {
    segment_base: LogPosition,
    segment_end: LogPosition,
    /// Positions of the active segment below this have reserved blocks.
    end: LogPosition,
    /// The end an append waits for, past `end` (or `end` when none waits).
    needed: LogPosition,
    step: u64,
    step_max: u64,
    state: State,
}

impl Reservation {
    /// The reservation of a segment `[segment_base, segment_end)` whose
    /// bytes below `end` are reserved; steps grow to `step_max`.
    pub fn new(
        segment_base: LogPosition,
        segment_end: LogPosition,
        end: LogPosition,
        step_max: u64,
    ) -> Reservation {
        assert!(segment_base <= end && end <= segment_end);
        Reservation {
            segment_base,
            segment_end,
            end,
            needed: end,
            step: RESERVE_MIN_BYTES.min(step_max),
            step_max: step_max.max(1),
            state: State::Idle,
        }
    }

    /// Start the steps again from the smallest, as for a fresh log: for a
    /// segment begun on a nearly full disk (`CommitLog::restart_reservation_steps`).
    pub fn restart_steps(&mut self) {
        self.step = RESERVE_MIN_BYTES.min(self.step_max);
    }

    /// How much to reserve when creating a new segment that starts with a
    /// frame of `frame_bytes`: the current step, or the frame rounded up to
    /// whole MiB. The caller clips it to the segment.
    pub fn first_bytes(&self, frame_bytes: u64) -> u64 {
        self.step
            .max(frame_bytes.next_multiple_of(RESERVE_MIN_BYTES))
    }

    /// A new segment `[base, segment_end)` became active with its bytes
    /// below `end` reserved. The step is kept (the log is busy); a
    /// reservation still in flight for the previous segment is ignored when
    /// it completes.
    pub fn start_segment(&mut self, base: LogPosition, segment_end: LogPosition, end: LogPosition) {
        assert!(base <= end && end <= segment_end);
        self.segment_base = base;
        self.segment_end = segment_end;
        self.end = end;
        self.needed = end;
        if matches!(self.state, State::Failed { .. }) {
            self.state = State::Idle;
        }
    }

    /// Whether a frame whose write ends at `write_end` (in the active
    /// segment, rounded up to the I/O block) may be appended now.
    pub fn admit(&mut self, write_end: LogPosition) -> Admit {
        assert!(write_end <= self.segment_end, "a write past its segment");
        if write_end <= self.end {
            return Admit::Ready;
        }
        if let State::Failed {
            from,
            to,
            error,
            reported,
        } = &mut self.state
        {
            if !*reported {
                *reported = true;
                return Admit::Failed(*from, *to, std::sync::Arc::clone(error));
            }
            self.state = State::Idle;
        }
        self.needed = self.needed.max(write_end);
        Admit::Wait
    }

    /// The range of the active segment to reserve next, as `(segment base,
    /// from, to)` log positions, if one is due: an append waits past the
    /// reserved end, or less than half a step is left ahead of
    /// `append_end`. Marks it in flight; [`Reservation::done`] ends it.
    pub fn due(
        &mut self,
        append_end: LogPosition,
    ) -> Option<(LogPosition, LogPosition, LogPosition)> {
        if !matches!(self.state, State::Idle) || self.end >= self.segment_end {
            return None;
        }
        let headroom = self.end.0.saturating_sub(append_end.0);
        if self.needed <= self.end && headroom >= self.step / 2 {
            return None;
        }
        let wanted = self
            .end
            .0
            .saturating_add(self.step)
            .max(self.needed.0.next_multiple_of(RESERVE_MIN_BYTES));
        let to = LogPosition(wanted.min(self.segment_end.0));
        self.state = State::InFlight;
        Some((self.segment_base, self.end, to))
    }

    /// A reservation asked for by [`Reservation::due`] finished. One for a
    /// segment that is no longer active changes nothing but the state.
    pub fn done(
        &mut self,
        segment_base: LogPosition,
        from: LogPosition,
        to: LogPosition,
        result: std::io::Result<()>,
    ) {
        assert!(
            matches!(self.state, State::InFlight),
            "a reservation finished that was not asked for"
        );
        self.state = State::Idle;
        if segment_base != self.segment_base {
            return;
        }
        match result {
            Ok(()) => {
                assert!(from <= self.end, "reservations are contiguous");
                self.end = self.end.max(to);
                self.step = (self.step * 2).min(self.step_max);
            }
            Err(error) => {
                // The next try asks for no more than the append needs
                // (plus the smallest step): a full-size step that no
                // longer fits would refuse appends on a disk with room
                // for them.
                self.step = RESERVE_MIN_BYTES.min(self.step_max);
                self.state = State::Failed {
                    from: from.0 - segment_base.0,
                    to: to.0 - segment_base.0,
                    error: std::sync::Arc::new(error),
                    reported: false,
                };
            }
        }
    }

    /// Positions of the active segment below this have reserved blocks.
    pub fn end(&self) -> LogPosition {
        self.end
    }

    /// Whether an append waits for a reservation.
    pub fn waited_on(&self) -> bool {
        self.needed > self.end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = RESERVE_MIN_BYTES;

    fn fresh() -> Reservation {
        Reservation::new(
            LogPosition(0),
            LogPosition(1024 * MIB),
            LogPosition(MIB),
            64 * MIB,
        )
    }

    fn complete(reservation: &mut Reservation, append_end: u64) -> Option<(u64, u64)> {
        let (base, from, to) = reservation.due(LogPosition(append_end))?;
        reservation.done(base, from, to, Ok(()));
        Some((from.0, to.0))
    }

    #[test]
    fn steps_double_to_the_maximum_and_stay_ahead_of_appends() {
        let mut reservation = fresh();
        assert_eq!(
            complete(&mut reservation, 4096),
            None,
            "more than half a step left"
        );
        assert_eq!(
            complete(&mut reservation, MIB / 2 + 1),
            Some((MIB, 2 * MIB))
        );
        assert_eq!(complete(&mut reservation, MIB / 2 + 1), None);
        let mut append_end = MIB;
        let mut ahead_max = 0;
        while append_end < 900 * MIB {
            append_end += 256 * 1024;
            while complete(&mut reservation, append_end).is_some() {}
            let ahead = reservation.end().0 - append_end;
            ahead_max = ahead_max.max(ahead);
            assert!(
                ahead >= MIB / 2,
                "{ahead} bytes reserved ahead at {append_end}"
            );
        }
        assert!(
            ahead_max <= 96 * MIB + MIB,
            "at most a step and a half ahead: {ahead_max}"
        );
        assert_eq!(
            reservation.first_bytes(10),
            64 * MIB,
            "the step reached its maximum"
        );
        assert_eq!(reservation.first_bytes(65 * MIB - 3), 65 * MIB);
    }

    #[test]
    fn an_append_past_the_end_waits_and_the_next_reservation_covers_it() {
        let mut reservation = fresh();
        assert!(matches!(reservation.admit(LogPosition(MIB)), Admit::Ready));
        assert!(matches!(
            reservation.admit(LogPosition(5 * MIB + 4096)),
            Admit::Wait
        ));
        assert!(reservation.waited_on());
        let (_, from, to) = reservation
            .due(LogPosition(MIB))
            .expect("due for the waiter");
        assert_eq!((from.0, to.0), (MIB, 6 * MIB));
        assert_eq!(
            reservation.due(LogPosition(MIB)),
            None,
            "one in flight at a time"
        );
        reservation.done(LogPosition(0), from, to, Ok(()));
        assert!(!reservation.waited_on());
        assert!(matches!(
            reservation.admit(LogPosition(5 * MIB + 4096)),
            Admit::Ready
        ));
    }

    #[test]
    fn a_failed_reservation_refuses_one_append_then_the_next_asks_again() {
        let mut reservation = fresh();
        assert!(matches!(
            reservation.admit(LogPosition(2 * MIB)),
            Admit::Wait
        ));
        let (base, from, to) = reservation.due(LogPosition(MIB)).unwrap();
        reservation.done(
            base,
            from,
            to,
            Err(std::io::Error::from_raw_os_error(libc::ENOSPC)),
        );
        assert_eq!(
            reservation.due(LogPosition(MIB)),
            None,
            "no retry loop while nobody asks"
        );
        match reservation.admit(LogPosition(2 * MIB)) {
            Admit::Failed(from, to, error) => {
                assert_eq!((from, to), (MIB, 2 * MIB));
                assert_eq!(error.raw_os_error(), Some(libc::ENOSPC));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(reservation.due(LogPosition(MIB)), None);
        assert!(matches!(
            reservation.admit(LogPosition(2 * MIB)),
            Admit::Wait
        ));
        let (base, from, to) = reservation.due(LogPosition(MIB)).expect("asked again");
        reservation.done(base, from, to, Ok(()));
        assert!(matches!(
            reservation.admit(LogPosition(2 * MIB)),
            Admit::Ready
        ));
    }

    /// Found by the breaker trial: the step kept its size after a failure,
    /// so every later try asked for a full 32 or 64 MiB and appends were
    /// refused with half the disk free.
    #[test]
    fn after_a_failure_the_next_try_asks_only_for_what_is_needed() {
        let mut reservation = fresh();
        let mut append_end = MIB;
        while reservation.first_bytes(0) < 32 * MIB {
            append_end += MIB;
            while complete(&mut reservation, append_end).is_some() {}
        }
        let end = reservation.end();
        let needed = end.plus(4096);
        assert!(matches!(reservation.admit(needed), Admit::Wait));
        let (base, from, to) = reservation.due(LogPosition(append_end)).unwrap();
        assert!(to.0 - from.0 >= 32 * MIB);
        reservation.done(
            base,
            from,
            to,
            Err(std::io::Error::from_raw_os_error(libc::ENOSPC)),
        );
        assert!(matches!(reservation.admit(needed), Admit::Failed(..)));
        assert!(matches!(reservation.admit(needed), Admit::Wait));
        let (_, from, to) = reservation.due(LogPosition(append_end)).unwrap();
        assert_eq!(
            (from, to),
            (end, end.plus(MIB)),
            "one small step past the need"
        );
    }

    #[test]
    fn a_reservation_for_a_rolled_segment_changes_nothing() {
        let mut reservation = fresh();
        let (base, from, to) = reservation.due(LogPosition(MIB - 1)).unwrap();
        let next = LogPosition(1024 * MIB);
        reservation.start_segment(next, LogPosition(2048 * MIB), next.plus(2 * MIB));
        reservation.done(base, from, to, Ok(()));
        assert_eq!(reservation.end(), next.plus(2 * MIB));
        assert!(matches!(
            reservation.admit(next.plus(2 * MIB)),
            Admit::Ready
        ));
        assert!(matches!(
            reservation.admit(next.plus(2 * MIB + 4096)),
            Admit::Wait
        ));
    }

    #[test]
    fn the_reservation_stops_at_the_segment_end() {
        let mut reservation = Reservation::new(
            LogPosition(0),
            LogPosition(4 * MIB),
            LogPosition(MIB),
            64 * MIB,
        );
        let mut append_end = 0;
        while append_end < 4 * MIB {
            append_end += 4096;
            while complete(&mut reservation, append_end).is_some() {}
        }
        assert_eq!(reservation.end(), LogPosition(4 * MIB));
    }
}

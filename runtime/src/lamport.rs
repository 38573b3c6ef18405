//! The Lamport clock, owned by the driver (roles never see it).
//!
//! Rules (Lamport 1978, IR1/IR2), one tick per logged event and nothing else:
//! a local event or a send sets `C := C + 1` and is stamped `C` (a send carries `C`);
//! a receive of a message stamped `Tm` sets `C := max(C, Tm) + 1`. Hellos and frames that
//! fault injection drops are not events and do not tick.

/// A node's Lamport clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LamportClock {
    time: u64,
}

impl LamportClock {
    /// The current value (the stamp of the last event).
    pub fn time(&self) -> u64 {
        self.time
    }

    /// A local event or a send: returns its stamp.
    pub fn tick(&mut self) -> u64 {
        self.time += 1;
        self.time
    }

    /// A receive of a message stamped `stamp`: returns the receive event's stamp.
    pub fn receive(&mut self, stamp: u64) -> u64 {
        self.time = self.time.max(stamp) + 1;
        self.time
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receive_jumps_past_the_stamp_and_always_ticks() {
        let mut clock = LamportClock::default();
        assert_eq!(clock.tick(), 1);
        assert_eq!(clock.receive(10), 11);
        // A stale stamp still advances the clock: the receive is an event (IR1).
        assert_eq!(clock.receive(3), 12);
        assert_eq!(clock.tick(), 13);
    }
}

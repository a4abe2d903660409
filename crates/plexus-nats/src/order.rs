//! Puts a channel's live publications back in offset order.
//!
//! The stream republishes each publication it keeps to the channel's live subject, but NATS
//! servers before 2.12 queue the republished copy after releasing the stream's lock: two
//! publications kept back to back through two connections can reach watchers swapped. The
//! engine promises offset order, so each watched channel's messages pass through an
//! [`InOrder`]: a publication that arrives ahead of one still missing waits for it, briefly.
//! One that never comes (core NATS dropped it) is a gap: the channel is reported interrupted
//! and its subscribers join again with recovery from the stream, as after a broken link.

use std::collections::BTreeMap;
use std::time::Duration;

use plexus_engine::Publication;
use tokio::time::Instant;

/// How long a publication that arrived early waits for the ones before it. Swapped
/// republishes arrive microseconds apart; this is for a loaded server, with room to spare.
pub(crate) const GAP_WAIT: Duration = Duration::from_secs(1);

/// At most this many early publications wait per channel; one more is a gap.
pub(crate) const MAX_HELD: usize = 1024;

/// What a watcher knows of the channel's next publication.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expect {
    /// This offset of this epoch.
    Next(String, u64),
    /// The channel kept nothing when the watch began: whatever epoch comes first, from its
    /// start (the anchor, offset 0, or offset 1).
    Fresh,
    /// Not known (after a gap): the next publication is taken as it comes.
    Unknown,
}

/// A gap that waiting will not close: the channel must be reported interrupted.
#[derive(Debug, PartialEq)]
pub(crate) struct Gap;

/// One channel's reordering.
pub(crate) struct InOrder {
    expect: Expect,
    /// Early publications of the expected epoch, by offset.
    held: BTreeMap<u64, Publication>,
    /// While something is held: when the channel last moved (the wait for what is missing
    /// starts there).
    since: Option<Instant>,
}

impl InOrder {
    /// `last` is the channel's last kept position (epoch, offset) read once the watch was
    /// live: anything at or before it is history, which a joining subscriber reads anyway.
    pub(crate) fn new(last: Option<(String, u64)>) -> Self {
        Self::expecting(match last {
            Some((epoch, offset)) => Expect::Next(epoch, offset + 1),
            None => Expect::Fresh,
        })
    }

    /// For a watch whose start is not known: takes the first publication as it comes.
    pub(crate) fn unknown() -> Self {
        Self::expecting(Expect::Unknown)
    }

    fn expecting(expect: Expect) -> Self {
        Self {
            expect,
            held: BTreeMap::new(),
            since: None,
        }
    }

    /// Until when the earliest held publication waits; `None` when nothing is held.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.since.map(|since| since + GAP_WAIT)
    }

    /// After a gap was reported: drops what was held (the stream has it) and takes the
    /// next publication as it comes.
    pub(crate) fn reset(&mut self) {
        *self = Self::unknown();
    }

    /// Takes the kept message at `(epoch, offset)` (offset 0 is a channel's anchor, no
    /// publication) and hands `deliver` every publication now in order, oldest first.
    pub(crate) fn accept(
        &mut self,
        epoch: &str,
        offset: u64,
        publication: impl FnOnce() -> Publication,
        mut deliver: impl FnMut(&Publication),
    ) -> Result<(), Gap> {
        let next = match &self.expect {
            Expect::Next(expected, next) if expected == epoch => *next,
            Expect::Next(..) => {
                // A new epoch: the channel's history was lost and it starts over.
                if !self.held.is_empty() {
                    return Err(Gap);
                }
                1.min(offset)
            }
            Expect::Fresh => 1.min(offset),
            Expect::Unknown => offset,
        };
        if offset < next {
            // Kept before the watch began (history), or delivered already.
            return Ok(());
        }
        if offset > next {
            if self.held.len() >= MAX_HELD {
                return Err(Gap);
            }
            if !matches!(&self.expect, Expect::Next(expected, _) if expected == epoch) {
                self.expect = Expect::Next(epoch.to_owned(), next);
            }
            self.held.entry(offset).or_insert_with(publication);
            self.since.get_or_insert_with(Instant::now);
            return Ok(());
        }
        if offset > 0 {
            deliver(&publication());
        }
        let mut next = offset + 1;
        while let Some(held) = self.held.remove(&next) {
            deliver(&held);
            next += 1;
        }
        self.since = if self.held.is_empty() {
            None
        } else {
            Some(Instant::now())
        };
        self.expect = Expect::Next(epoch.to_owned(), next);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_protocol::{Codec, Payload};

    fn publication(epoch: &str, offset: u64) -> Publication {
        Publication {
            channel: "c".into(),
            epoch: epoch.into(),
            offset,
            data: Payload::from_raw(Codec::Json, bytes::Bytes::from_static(b"1")),
        }
    }

    /// Feeds `(epoch, offset)` pairs; returns the offsets delivered, in order, or the gap.
    fn feed(order: &mut InOrder, kept: &[(&str, u64)]) -> Result<Vec<u64>, Gap> {
        let mut delivered = Vec::new();
        for &(epoch, offset) in kept {
            order.accept(
                epoch,
                offset,
                || publication(epoch, offset),
                |p| delivered.push(p.offset),
            )?;
        }
        Ok(delivered)
    }

    #[test]
    fn a_swapped_pair_comes_out_in_order() {
        let mut order = InOrder::new(Some(("e".into(), 182)));
        let delivered = feed(&mut order, &[("e", 184), ("e", 183), ("e", 185)]);
        assert_eq!(delivered, Ok(vec![183, 184, 185]));
        assert_eq!(order.deadline(), None, "nothing waits any more");
    }

    #[test]
    fn what_was_kept_before_the_watch_is_left_to_history() {
        let mut order = InOrder::new(Some(("e".into(), 5)));
        assert_eq!(feed(&mut order, &[("e", 5), ("e", 6)]), Ok(vec![6]));
    }

    #[test]
    fn a_fresh_channel_waits_for_its_first_publication() {
        let mut order = InOrder::new(None);
        assert_eq!(feed(&mut order, &[("e", 2)]), Ok(vec![]));
        assert!(order.deadline().is_some(), "offset 2 waits for offset 1");
        assert_eq!(feed(&mut order, &[("e", 1)]), Ok(vec![1, 2]));
    }

    #[test]
    fn an_anchor_sets_the_epoch_and_is_not_delivered() {
        let mut order = InOrder::new(None);
        assert_eq!(feed(&mut order, &[("e", 0), ("e", 1)]), Ok(vec![1]));
    }

    #[test]
    fn a_new_epoch_starts_over() {
        let mut order = InOrder::new(Some(("old".into(), 9)));
        assert_eq!(
            feed(&mut order, &[("old", 10), ("new", 2), ("new", 1)]),
            Ok(vec![10, 1, 2])
        );
    }

    #[test]
    fn a_new_epoch_while_one_is_missing_is_a_gap() {
        let mut order = InOrder::new(Some(("old".into(), 9)));
        assert_eq!(feed(&mut order, &[("old", 11), ("new", 1)]), Err(Gap));
    }

    #[test]
    fn too_many_early_publications_are_a_gap() {
        let mut order = InOrder::new(Some(("e".into(), 0)));
        let early: Vec<(&str, u64)> = (2..2 + MAX_HELD as u64).map(|n| ("e", n)).collect();
        assert_eq!(feed(&mut order, &early), Ok(vec![]));
        assert_eq!(feed(&mut order, &[("e", 5000)]), Err(Gap));
    }

    #[test]
    fn after_a_gap_the_next_publication_is_taken_as_it_comes() {
        let mut order = InOrder::new(Some(("e".into(), 0)));
        assert_eq!(feed(&mut order, &[("e", 3)]), Ok(vec![]));
        order.reset();
        assert_eq!(order.deadline(), None);
        assert_eq!(feed(&mut order, &[("e", 7), ("e", 8)]), Ok(vec![7, 8]));
    }

    #[test]
    fn a_repeat_is_delivered_once() {
        let mut order = InOrder::new(Some(("e".into(), 0)));
        assert_eq!(
            feed(&mut order, &[("e", 1), ("e", 1), ("e", 2)]),
            Ok(vec![1, 2])
        );
    }
}

//! How many events after a cursor a connector selects, without decoding the whole backlog
//! at every page refresh: the feed is cut into blocks of [`BLOCK`] seqs, and the count of
//! each event type in a whole block is kept once read. A question about (after, upto]
//! reads at most the two partial blocks at its ends plus blocks never read before.
//!
//! Blocks are immutable once whole (seqs are never reused); compaction only removes a
//! prefix, and callers start their ranges at or after the first kept event, so a block
//! counted before compaction is only ever used whole when all its events are still there.

use std::collections::BTreeMap;

use super::{Error, Reader};
use crate::event::{Event, Seq};

/// Seqs per block.
pub(super) const BLOCK: u64 = 1024;

/// Event-type counts of whole blocks, by block number (block `b` holds seqs
/// `b*BLOCK+1 ..= (b+1)*BLOCK`).
#[derive(Debug, Default)]
pub(crate) struct LagIndex {
    blocks: BTreeMap<u64, BTreeMap<String, u32>>,
}

/// What is waiting for one connector.
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// Selected events in the range.
    pub(super) count: u64,
    /// The first of them.
    pub(super) first: Option<Event>,
}

impl LagIndex {
    /// Selected events with `after < seq <= upto`, and the first of them.
    pub(super) fn pending(
        &mut self,
        store: &Reader,
        selects: &dyn Fn(&str) -> bool,
        after: Seq,
        upto: Seq,
    ) -> Result<Pending, Error> {
        let mut out = Pending::default();
        let mut at = after;
        while at < upto {
            let block = at / BLOCK;
            let end = (block + 1) * BLOCK;
            let whole = at == block * BLOCK && end <= upto;
            if whole {
                if let Some(counts) = self.blocks.get(&block) {
                    let n = selected(counts, selects);
                    if n > 0 && out.first.is_none() {
                        out.first = scan(store, at, end, selects)?.1;
                    }
                    out.count += n;
                    at = end;
                    continue;
                }
            }
            let stop = end.min(upto);
            let events = read(store, at, stop)?;
            if whole {
                let mut counts = BTreeMap::new();
                for e in &events {
                    *counts.entry(e.event_type.clone()).or_insert(0) += 1;
                }
                self.blocks.insert(block, counts);
            }
            for e in events {
                if selects(&e.event_type) {
                    out.count += 1;
                    if out.first.is_none() {
                        out.first = Some(e);
                    }
                }
            }
            at = stop;
        }
        Ok(out)
    }

    /// Drops the blocks wholly at or below `seq` (no connector's cursor is below it).
    pub(super) fn forget_below(&mut self, seq: Seq) {
        self.blocks.retain(|b, _| (b + 1) * BLOCK > seq);
    }

    #[cfg(test)]
    pub(super) fn n_blocks(&self) -> usize {
        self.blocks.len()
    }
}

fn selected(counts: &BTreeMap<String, u32>, selects: &dyn Fn(&str) -> bool) -> u64 {
    counts
        .iter()
        .filter(|(t, _)| selects(t))
        .map(|(_, n)| u64::from(*n))
        .sum()
}

/// The events with `after < seq <= upto`.
fn read(store: &Reader, after: Seq, upto: Seq) -> Result<Vec<Event>, Error> {
    let n = usize::try_from(upto - after).unwrap_or(usize::MAX);
    let mut events = store.read_after(after, n)?;
    events.retain(|e| e.seq <= upto);
    Ok(events)
}

/// Counts and finds the first selected event of `(after, upto]` by reading it.
fn scan(
    store: &Reader,
    after: Seq,
    upto: Seq,
    selects: &dyn Fn(&str) -> bool,
) -> Result<(u64, Option<Event>), Error> {
    let mut first = None;
    let mut n = 0;
    for e in read(store, after, upto)? {
        if selects(&e.event_type) {
            n += 1;
            if first.is_none() {
                first = Some(e);
            }
        }
    }
    Ok((n, first))
}

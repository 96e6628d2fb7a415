//! The recovery rule: whether a subscribe with `since` is a recovery, and what to replay.

use herald_core::Publication;
use herald_core::broker::HistoryResult;
use herald_core::protocol::Since;

/// Decides whether a subscribe with `since` is a recovery, and what to replay.
///
/// Recovered means: same epoch, the client is not ahead of the stream, and every publication
/// after its offset is still retained (and there are at most `max` of them, the
/// `limits.max_recovery` cap). Otherwise the client must refetch its state (`recovered:false`,
/// nothing replayed): never a partial replay that would hide a gap.
pub fn recover<'r>(
    since: Option<&Since>,
    result: &'r HistoryResult,
    max: usize,
) -> (bool, &'r [Publication]) {
    let Some(since) = since else {
        return (false, &[]);
    };
    let pos = &result.position;
    if since.epoch != *pos.epoch || since.offset > pos.offset {
        return (false, &[]);
    }
    let missing = pos.offset - since.offset;
    if missing == 0 {
        return (true, &[]);
    }
    let pubs = &result.publications;
    let complete = missing as usize <= max
        && pubs.len() as u64 == missing
        && pubs.first().is_some_and(|p| p.offset == since.offset + 1);
    if complete { (true, pubs) } else { (false, &[]) }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use herald_core::Position;
    use serde_json::value::RawValue;

    use super::*;

    fn history(offset: u64, retained: &[u64]) -> HistoryResult {
        let publications = retained
            .iter()
            .copied()
            .map(|o| Publication {
                channel: Arc::from("c"),
                offset: o,
                epoch: Arc::from("e"),
                data: Arc::from(RawValue::from_string("1".into()).unwrap()),
                from: None,
            })
            .collect::<Vec<_>>();
        HistoryResult {
            earliest: publications.first().map_or(offset + 1, |p| p.offset),
            position: Position {
                offset,
                epoch: Arc::from("e"),
            },
            publications,
        }
    }

    fn since(offset: u64, epoch: &str) -> Since {
        Since {
            offset,
            epoch: epoch.into(),
        }
    }

    #[test]
    fn the_recovery_rule() {
        // (what the client has, history as read, cap) → (recovered, offsets replayed)
        #[allow(clippy::type_complexity)]
        let table: &[(Option<Since>, HistoryResult, usize, bool, &[u64])] = &[
            (None, history(5, &[1, 2, 3, 4, 5]), 100, false, &[]),
            (
                Some(since(5, "e")),
                history(5, &[1, 2, 3, 4, 5]),
                100,
                true,
                &[],
            ),
            (Some(since(3, "e")), history(5, &[4, 5]), 100, true, &[4, 5]),
            (Some(since(0, "e")), history(2, &[1, 2]), 100, true, &[1, 2]),
            // The epoch changed: history was lost.
            (Some(since(3, "old")), history(5, &[4, 5]), 100, false, &[]),
            // The client claims to be ahead of the stream.
            (
                Some(since(9, "e")),
                history(5, &[1, 2, 3, 4, 5]),
                100,
                false,
                &[],
            ),
            // A gap: offset 3 is no longer retained.
            (Some(since(2, "e")), history(5, &[4, 5]), 100, false, &[]),
            // More missing than the cap.
            (
                Some(since(0, "e")),
                history(5, &[1, 2, 3, 4, 5]),
                4,
                false,
                &[],
            ),
            (
                Some(since(1, "e")),
                history(5, &[2, 3, 4, 5]),
                4,
                true,
                &[2, 3, 4, 5],
            ),
            // Nothing retained at all (a channel without history) but publications missed.
            (Some(since(1, "e")), history(2, &[]), 100, false, &[]),
        ];
        for (i, (s, h, max, recovered, offsets)) in table.iter().enumerate() {
            let (r, replay) = recover(s.as_ref(), h, *max);
            let got: Vec<u64> = replay.iter().map(|p| p.offset).collect();
            assert_eq!((r, got.as_slice()), (*recovered, *offsets), "row {i}");
        }
    }
}

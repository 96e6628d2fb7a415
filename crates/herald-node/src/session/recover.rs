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
    // Checked offset by offset rather than trusting the broker's ordering: a history read
    // that raced a publication (an offset past `position`) must not pass for a gapless one.
    let complete = missing as usize <= max
        && pubs.len() as u64 == missing
        && pubs
            .iter()
            .zip(since.offset + 1..)
            .all(|(p, expected)| p.offset == expected);
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
            // The right count starting at the right offset, but with a gap and an offset
            // past the position (a history read that raced a publication).
            (Some(since(0, "e")), history(2, &[1, 3]), 100, false, &[]),
        ];
        for (i, (s, h, max, recovered, offsets)) in table.iter().enumerate() {
            let (r, replay) = recover(s.as_ref(), h, *max);
            let got: Vec<u64> = replay.iter().map(|p| p.offset).collect();
            assert_eq!((r, got.as_slice()), (*recovered, *offsets), "row {i}");
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// A channel at `position`, a client holding `since` (same epoch or not), and what the
        /// broker retained: a suffix of the stream with random gaps and, sometimes, offsets past
        /// the position, so the rule is tested against brokers that trimmed, lost or raced,
        /// not only well-behaved ones.
        fn case() -> impl Strategy<Value = (u64, u64, bool, Vec<u64>, usize)> {
            (0u64..40).prop_flat_map(|position| {
                (
                    Just(position),
                    0..position + 5,
                    any::<bool>(),
                    retained(position),
                    0usize..45,
                )
            })
        }

        fn retained(position: u64) -> impl Strategy<Value = Vec<u64>> {
            let n = position as usize + 1;
            (1..=position + 1, prop::collection::vec(0u8..12, n), 0u64..3).prop_map(
                move |(earliest, noise, past)| {
                    let mut kept: Vec<u64> = (earliest..=position)
                        .filter(|o| noise[*o as usize] != 0)
                        .collect();
                    kept.extend(position + 1..=position + past);
                    kept
                },
            )
        }

        /// What a broker returns for `after = since`, `limit = max + 1` (the session's query):
        /// the retained offsets above `since`, oldest first.
        fn read(position: u64, retained: &[u64], since: u64, max: usize) -> HistoryResult {
            let after: Vec<u64> = retained
                .iter()
                .copied()
                .filter(|o| *o > since)
                .take(max + 1)
                .collect();
            history(position, &after)
        }

        proptest! {
            /// Recovered ⇒ the replay is exactly `since+1 ..= position`, contiguous, in order;
            /// not recovered ⇒ nothing is replayed.
            #[test]
            fn recovered_means_exactly_the_missed_offsets(
                (position, s, same_epoch, retained, max) in case()
            ) {
                let result = read(position, &retained, s, max);
                let since = since(s, if same_epoch { "e" } else { "other" });
                let (recovered, replay) = recover(Some(&since), &result, max);
                let got: Vec<u64> = replay.iter().map(|p| p.offset).collect();
                if recovered {
                    prop_assert!(same_epoch && s <= position);
                    prop_assert_eq!(got, (s + 1..=position).collect::<Vec<_>>());
                } else {
                    prop_assert!(got.is_empty());
                }
            }

            /// Whenever every missed publication is retained (and within the cap) in the same
            /// epoch, recovery succeeds: the rule never sends a client to refetch needlessly.
            #[test]
            fn a_complete_history_always_recovers(
                (position, s, _same, _retained, max) in case(),
                earliest in 1u64..45,
            ) {
                let retained: Vec<u64> = (earliest..=position).collect();
                let result = read(position, &retained, s, max);
                let (recovered, _) = recover(Some(&since(s, "e")), &result, max);
                let expected = s <= position
                    && (position - s) as usize <= max
                    && (s + 1 >= earliest || s == position);
                prop_assert_eq!(recovered, expected);
            }

            /// No `since`, no recovery and no replay, whatever the history.
            #[test]
            fn no_since_no_replay((position, _s, _same, retained, max) in case()) {
                let result = history(position, &retained);
                let (recovered, replay) = recover(None, &result, max);
                prop_assert!(!recovered && replay.is_empty());
            }
        }
    }
}

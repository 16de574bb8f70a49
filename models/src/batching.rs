//! Splitting a call's texts into inference batches that waste little work on padding.
//!
//! A batch costs about (texts x longest text) token-steps, since every text is padded to the
//! longest. Mixed-length input embedded in arrival order pays for a lot of padding; sorted by
//! length and cut where the lengths jump, it pays for almost none. This is the same idea as
//! sentence-transformers' length sorting, with the cut points chosen by a small dynamic
//! programme instead of fixed-size chunks.

use std::ops::Range;

/// Fixed cost of one inference call, in token-steps (session dispatch, thread wake-up).
const RUN_OVERHEAD_TOKENS: f64 = 8.0;
/// Tokens at which a transformer's attention costs as much as its dense layers; it makes long
/// batches costlier than their token count alone says. MiniLM (d=384, 6 layers): ~d*6.
const ATTENTION_CROSSOVER_TOKENS: f64 = 2304.0;

/// Estimated cost of running `count` texts padded to `longest` tokens.
fn batch_cost(count: usize, longest: usize) -> f64 {
    let longest = longest as f64;
    count as f64 * longest * (1.0 + longest / ATTENTION_CROSSOVER_TOKENS) + RUN_OVERHEAD_TOKENS
}

/// Cuts `sorted_lengths` (ascending) into consecutive ranges of at most `max_batch` that
/// minimise the total estimated cost.
pub fn plan(sorted_lengths: &[usize], max_batch: usize) -> Vec<Range<usize>> {
    debug_assert!(sorted_lengths.is_sorted());
    let n = sorted_lengths.len();
    let max_batch = max_batch.max(1);
    // best[j]: cheapest cost of the first j texts; cut[j]: where the last batch of those starts.
    let mut best = vec![0f64; n + 1];
    let mut cut = vec![0usize; n + 1];
    for j in 1..=n {
        best[j] = f64::INFINITY;
        for i in j.saturating_sub(max_batch)..j {
            let cost = best[i] + batch_cost(j - i, sorted_lengths[j - 1]);
            if cost < best[j] {
                best[j] = cost;
                cut[j] = i;
            }
        }
    }
    let mut ranges = Vec::new();
    let mut end = n;
    while end > 0 {
        ranges.push(cut[end]..end);
        end = cut[end];
    }
    ranges.reverse();
    ranges
}

/// Fixed-size chunks in the given order: what a caller gets with length bucketing off.
pub fn chunks(n: usize, max_batch: usize) -> Vec<Range<usize>> {
    let max_batch = max_batch.max(1);
    (0..n)
        .step_by(max_batch)
        .map(|start| start..(start + max_batch).min(n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covers_in_order(ranges: &[Range<usize>], n: usize, max_batch: usize) {
        let mut next = 0;
        for r in ranges {
            assert_eq!(r.start, next);
            assert!(!r.is_empty() && r.len() <= max_batch, "{r:?}");
            next = r.end;
        }
        assert_eq!(next, n);
    }

    #[test]
    fn equal_lengths_fill_whole_batches() {
        let ranges = plan(&[20; 64], 32);
        covers_in_order(&ranges, 64, 32);
        assert_eq!(ranges.len(), 2);
    }

    #[test]
    fn a_long_outlier_gets_its_own_batch() {
        let mut lengths = vec![10; 31];
        lengths.push(256);
        let ranges = plan(&lengths, 32);
        covers_in_order(&ranges, 32, 32);
        assert_eq!(ranges.last(), Some(&(31..32)));
    }

    #[test]
    fn plans_are_valid_for_any_input() {
        for n in 0..40 {
            let lengths: Vec<usize> = (0..n).map(|i| 3 + (i * i) % 97).collect::<Vec<_>>();
            let mut sorted = lengths.clone();
            sorted.sort_unstable();
            for max_batch in [1, 3, 8, 32] {
                covers_in_order(&plan(&sorted, max_batch), n, max_batch);
                covers_in_order(&chunks(n, max_batch), n, max_batch);
            }
        }
    }
}

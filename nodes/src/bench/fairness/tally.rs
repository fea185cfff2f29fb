//! The fairness benchmark's arithmetic (pure): shares, Jain's index, and the intervals
//! a tenant had requests in flight.

use super::{Request, WhileIdle};

/// Each value's share of their sum; all zero when the sum is.
pub(super) fn shares(values: &[f64]) -> Vec<f64> {
    let sum: f64 = values.iter().sum();
    values.iter().map(|v| if sum > 0.0 { v / sum } else { 0.0 }).collect()
}

/// Jain's fairness index of `values` normalized by `weights`: (Σx)² ÷ (n·Σx²) with
/// x = value ÷ weight. 1 when every tenant got exactly its weight's worth, 1/n when one
/// got everything; 0 with nothing served.
pub(super) fn jain(values: &[f64], weights: &[f64]) -> f64 {
    let x: Vec<f64> = values.iter().zip(weights).map(|(v, w)| if *w > 0.0 { v / w } else { 0.0 }).collect();
    let (sum, squares) = (x.iter().sum::<f64>(), x.iter().map(|v| v * v).sum::<f64>());
    if squares > 0.0 {
        sum * sum / (x.len() as f64 * squares)
    } else {
        0.0
    }
}

/// `intervals` clipped to `window`, merged, in order.
pub(super) fn merged(intervals: &[(f64, f64)], window: (f64, f64)) -> Vec<(f64, f64)> {
    let mut v: Vec<(f64, f64)> =
        intervals.iter().map(|(s, e)| (s.max(window.0), e.min(window.1))).filter(|(s, e)| e > s).collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out: Vec<(f64, f64)> = Vec::new();
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Seconds of `window` covered by at least one of `intervals`.
pub(super) fn covered(intervals: &[(f64, f64)], window: (f64, f64)) -> f64 {
    merged(intervals, window).iter().map(|(s, e)| e - s).sum()
}

/// The parts of `window` covered by none of `intervals`.
pub(super) fn gaps(intervals: &[(f64, f64)], window: (f64, f64)) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    let mut at = window.0;
    for (s, e) in merged(intervals, window) {
        if s > at {
            out.push((at, s));
        }
        at = e;
    }
    if window.1 > at {
        out.push((at, window.1));
    }
    out
}

/// Completion tokens generated inside `windows` (disjoint), each request's spread evenly
/// from its first token to its end (the echo engine streams at a steady rate).
pub(super) fn generated(requests: &[Request], windows: &[(f64, f64)]) -> f64 {
    let mut sum = 0.0;
    for r in requests {
        let span = r.done - r.first;
        for (s, e) in windows {
            if span <= 0.0 {
                // All at once: counted where it ended.
                if r.done >= *s && r.done < *e {
                    sum += f64::from(r.completion);
                }
                continue;
            }
            let overlap = (r.done.min(*e) - r.first.max(*s)).max(0.0);
            sum += f64::from(r.completion) * overlap / span;
        }
    }
    sum
}

/// A's generation while B had nothing in flight (sent and not ended) within `window`.
pub(super) fn while_idle(a: &[Request], b: &[Request], window: (f64, f64)) -> WhileIdle {
    let busy: Vec<(f64, f64)> = b.iter().map(|r| (r.sent, r.done)).collect();
    let idle = gaps(&busy, window);
    let secs: f64 = idle.iter().map(|(s, e)| e - s).sum();
    WhileIdle { per_sec: if secs > 0.0 { generated(a, &idle) / secs } else { 0.0 }, secs }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    fn req(sent: f64, first: f64, done: f64, tokens: u32) -> Request {
        Request { sent, first, done, prompt: tokens, completion: tokens }
    }

    #[test]
    fn shares_are_of_the_sum_and_zero_without_one() {
        assert_eq!(shares(&[3.0, 1.0]), vec![0.75, 0.25]);
        assert_eq!(shares(&[0.0, 0.0]), vec![0.0, 0.0]);
        assert!(shares(&[]).is_empty());
    }

    #[test]
    fn jain_is_one_when_each_got_its_weights_worth() {
        assert!(close(jain(&[5.0, 5.0], &[1.0, 1.0]), 1.0));
        assert!(close(jain(&[300.0, 100.0], &[3.0, 1.0]), 1.0));
        // One tenant got everything: 1/n.
        assert!(close(jain(&[10.0, 0.0], &[1.0, 1.0]), 0.5));
        // 55/45 at equal weights: (100)² / (2 · (55² + 45²)) = 0.99.
        assert!(close(jain(&[55.0, 45.0], &[1.0, 1.0]), 10_000.0 / 10_100.0));
        // Equal tokens at 3:1 weights are not fair.
        assert!(jain(&[100.0, 100.0], &[3.0, 1.0]) < 0.9);
        assert_eq!(jain(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
    }

    #[test]
    fn intervals_merge_within_the_window() {
        let v = [(0.0, 2.0), (1.0, 3.0), (5.0, 6.0), (9.0, 12.0)];
        assert_eq!(merged(&v, (1.0, 10.0)), vec![(1.0, 3.0), (5.0, 6.0), (9.0, 10.0)]);
        assert!(close(covered(&v, (1.0, 10.0)), 4.0));
        assert_eq!(gaps(&v, (1.0, 10.0)), vec![(3.0, 5.0), (6.0, 9.0)]);
        assert_eq!(gaps(&[], (1.0, 2.0)), vec![(1.0, 2.0)]);
        assert!(gaps(&[(0.0, 5.0)], (1.0, 2.0)).is_empty());
    }

    #[test]
    fn generation_is_spread_over_each_answer() {
        // 10 tokens from 1 s to 2 s; 4 tokens from 2 s to 4 s.
        let r = [req(0.0, 1.0, 2.0, 10), req(0.5, 2.0, 4.0, 4)];
        assert!(close(generated(&r, &[(0.0, 10.0)]), 14.0));
        assert!(close(generated(&r, &[(1.5, 3.0)]), 5.0 + 2.0));
        assert!(close(generated(&r, &[(0.0, 1.5), (3.0, 3.5)]), 5.0 + 1.0));
        // An answer with no span counts where it ended.
        assert!(close(generated(&[req(0.0, 2.0, 2.0, 3)], &[(1.0, 3.0)]), 3.0));
    }

    #[test]
    fn a_generates_while_b_has_nothing_in_flight() {
        // B in flight over [1, 2] and [3, 4] of the window [0, 5]: idle 3 s.
        let b = [req(1.0, 1.1, 2.0, 1), req(3.0, 3.1, 4.0, 1)];
        // A streams 10 tokens a second throughout.
        let a = [req(0.0, 0.0, 5.0, 50)];
        let w = while_idle(&a, &b, (0.0, 5.0));
        assert!(close(w.secs, 3.0) && close(w.per_sec, 10.0), "{w:?}");
        // B never idle: nothing to measure.
        let w = while_idle(&a, &[req(0.0, 0.5, 5.0, 1)], (0.0, 5.0));
        assert_eq!((w.secs, w.per_sec), (0.0, 0.0));
    }

    #[test]
    fn a_tenant_counts_what_ended_in_the_window() {
        let r = [req(0.0, 0.5, 1.0, 10), req(1.0, 1.5, 2.5, 10), req(2.0, 3.5, 4.5, 10)];
        let row = summarize(Who::B, 1, Load::Backlog(2), &r, 1, (2.0, 4.0));
        assert_eq!((row.ended, row.tokens, row.failed), (1, 20, 1));
        assert!(close(row.latency.secs[0], 1.5));
        assert!(close(row.first.secs[0], 0.5));
        // Waiting: sent-to-first intervals [1, 1.5] and [2, 3.5] within [2, 4]: 1.5 of 2 s.
        assert!(close(row.waiting, 0.75));
        // Generated in [2, 4]: half of the second (5) and half of the third (5), over 2 s.
        assert!(close(row.generated_per_sec, 5.0));
    }

    #[test]
    fn the_targets_read_the_right_phases() {
        let row =
            |who, weight, tokens| TenantRow { tokens, ..summarize(who, weight, Load::Backlog(1), &[], 0, (0.0, 1.0)) };
        let f = Fairness {
            phases: vec![
                PhaseRow {
                    phase: Phase::Equal,
                    tenants: vec![row(Who::A, 1, 520), row(Who::B, 1, 480)],
                    a_while_b_idle: None,
                },
                PhaseRow {
                    phase: Phase::Weighted,
                    tenants: vec![row(Who::A, 3, 700), row(Who::B, 1, 300)],
                    a_while_b_idle: None,
                },
            ],
            nats: String::new(),
            settle: 1.0,
            window: 1.0,
        };
        let c = checks(&f);
        assert_eq!(c.len(), 3);
        assert_eq!(c[0].met, Some(true), "{}", c[0].value); // B 48 %
        assert_eq!(c[1].met, Some(true), "{}", c[1].value); // Jain 0.998
        assert_eq!(c[2].met, Some(false), "{}", c[2].value); // 70 / 30: out of ± 5
    }
}

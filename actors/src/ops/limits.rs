//! Whether a window of use is over a set of limits (pure): the one rule behind API keys'
//! 429s at the gateways and client identities' `rate_limit_exceeded` at the task
//! managers.

use bitinglip_bus_schema::KeyLimits;
use bitinglip_nats::store::counters::Window;

/// The first limit `w` is over at `now_ms`, as what it is over and the seconds until it
/// resets; `None` under every limit. Requests count this one; tokens count finished
/// tasks, so a limit is reached when they are spent.
pub fn over(limits: &KeyLimits, w: &Window, now_ms: u64) -> Option<(String, u64)> {
    if let Some(rpm) = limits.rpm.map(u64::from) {
        if w.requests > rpm {
            return Some((format!("over the limit of {rpm} requests per minute"), w.reset_secs));
        }
    }
    if let Some(tpm) = limits.tpm {
        if w.tokens >= tpm {
            return Some((format!("over the limit of {tpm} tokens per minute"), w.reset_secs));
        }
    }
    if let Some(day) = limits.tokens_per_day {
        if w.tokens_today >= day {
            let to_midnight = (86_400_000 - now_ms % 86_400_000).div_ceil(1000);
            return Some((format!("over the budget of {day} tokens per day (UTC)"), to_midnight));
        }
    }
    None
}

/// The share of each of `limits` that `w` has used (pure), by the limit's name: what a
/// key near its quota is alerted on.
pub fn used(limits: &KeyLimits, w: &Window) -> Vec<(&'static str, f64)> {
    let share = |used: u64, limit: u64| used as f64 / limit.max(1) as f64;
    let mut out = Vec::new();
    if let Some(rpm) = limits.rpm {
        out.push(("rpm", share(w.requests, u64::from(rpm))));
    }
    if let Some(tpm) = limits.tpm {
        out.push(("tpm", share(w.tokens, tpm)));
    }
    if let Some(day) = limits.tokens_per_day {
        out.push(("tokens_per_day", share(w.tokens_today, day)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_used_is_given_for_each_limit_set() {
        let w = Window { requests: 3, tokens: 50, tokens_today: 900, reset_secs: 7 };
        let limits = KeyLimits { rpm: Some(4), tpm: None, tokens_per_day: Some(1000), max_concurrent: None };
        assert_eq!(used(&limits, &w), vec![("rpm", 0.75), ("tokens_per_day", 0.9)]);
        assert!(used(&KeyLimits::default(), &w).is_empty());
    }

    #[test]
    fn the_first_limit_passed_is_named_with_its_reset() {
        let w = |requests, tokens, tokens_today| Window { requests, tokens, tokens_today, reset_secs: 7 };
        let limits = KeyLimits { rpm: Some(2), tpm: Some(100), tokens_per_day: Some(1000), max_concurrent: None };
        assert_eq!(over(&limits, &w(2, 99, 999), 0), None);
        assert_eq!(over(&limits, &w(3, 0, 0), 0), Some(("over the limit of 2 requests per minute".into(), 7)));
        assert_eq!(over(&limits, &w(1, 100, 0), 0), Some(("over the limit of 100 tokens per minute".into(), 7)));
        let day = over(&limits, &w(1, 0, 1000), 86_400_000 - 5_000).unwrap();
        assert_eq!(day, ("over the budget of 1000 tokens per day (UTC)".into(), 5));
        assert_eq!(over(&KeyLimits::default(), &w(1_000_000, 1 << 40, 1 << 40), 0), None);
    }
}

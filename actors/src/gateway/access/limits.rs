//! Rate limits and token budgets of API keys, counted across every gateway in the
//! cluster's counter streams (see `store::counters`): requests per minute, tokens per
//! minute, tokens per day (UTC). A request that would go over answers 429 with
//! `Retry-After`; responses to a limited key carry OpenAI's headers
//! (`x-ratelimit-limit-requests`, `x-ratelimit-remaining-requests`,
//! `x-ratelimit-reset-requests`, and the same for tokens).
//!
//! Counting costs one round trip per request of a limited key (the request counter's
//! increment and the two token reads run at once) and nothing for a key without limits.
//! A refusal is remembered by the gateway until its window ends: while it stands, that
//! key's requests are refused from memory, with no round trip (a flood from a key over
//! its limit costs a lock per request).
//! Tokens are counted when a task finishes, so a burst of long answers can overshoot a
//! token limit by what was in flight; the next request is refused.

use axum::{
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use bitinglip_bus_schema::KeyLimits;
use bitinglip_nats::store::counters::Window;

use std::sync::Arc;

use crate::gateway::error::ApiError;

/// The routes that spend a key's budget.
pub(crate) fn counted(method: &axum::http::Method, path: &str) -> bool {
    method == axum::http::Method::POST
        && matches!(
            path,
            "/v1/chat/completions"
                | "/v1/completions"
                | "/v1/embeddings"
                | "/v1/responses"
                | "/v1/tasks"
                | "/v1/batches"
        )
}

/// What the counts say (pure): the headers to send, and the refusal when over a limit.
pub(crate) fn verdict(limits: &KeyLimits, w: &Window, now_ms: u64) -> (HeaderMap, Option<ApiError>) {
    let mut headers = HeaderMap::new();
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    if let Some(rpm) = limits.rpm.map(u64::from) {
        put("x-ratelimit-limit-requests", rpm.to_string());
        put("x-ratelimit-remaining-requests", rpm.saturating_sub(w.requests).to_string());
        put("x-ratelimit-reset-requests", format!("{}s", w.reset_secs));
    }
    if let Some(tpm) = limits.tpm {
        put("x-ratelimit-limit-tokens", tpm.to_string());
        put("x-ratelimit-remaining-tokens", tpm.saturating_sub(w.tokens).to_string());
        put("x-ratelimit-reset-tokens", format!("{}s", w.reset_secs));
    }
    if let Some(day) = limits.tokens_per_day {
        put("x-ratelimit-limit-tokens-per-day", day.to_string());
        put("x-ratelimit-remaining-tokens-per-day", day.saturating_sub(w.tokens_today).to_string());
    }
    let refusal = crate::ops::limits::over(limits, w, now_ms).map(|(why, retry)| {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", format!("this API key is {why}; retry later"))
            .with_code("rate_limit_exceeded")
            .with_retry_after(retry.max(1))
    });
    (headers, refusal)
}

/// What a batch's next line may do under its key's limits (pure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LineVerdict {
    /// Submit it.
    Go,
    /// Wait until the minute's window ends (`rpm` or `tpm`).
    Wait,
    /// The day's token budget is spent: this line and every one after it fail with
    /// `rate_limit_exceeded` (the message says why).
    BudgetSpent(String),
}

/// What a batch line would spend: its request's number in the minute, and tokens.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LineCost {
    /// The line's request would be this one of the minute.
    pub(crate) requests: u64,
    /// `max_tokens` of the key's lines still running (they count when they finish).
    pub(crate) reserved: u64,
    /// This line's `max_tokens`.
    pub(crate) tokens: u64,
}

/// [`LineVerdict`] for a line costing `cost` in `w`'s windows. Tokens count when a task
/// finishes, so the lines still running hold their `max_tokens` against the day's budget:
/// a line that would not fit waits for them, and runs alone when none is left (a budget
/// is overshot at most by one line, as by one request).
pub(crate) fn line_verdict(limits: &KeyLimits, w: &Window, cost: LineCost) -> LineVerdict {
    if let Some(day) = limits.tokens_per_day {
        if w.tokens_today >= day {
            return LineVerdict::BudgetSpent(format!(
                "this API key's budget of {day} tokens per day (UTC) is spent; the line did not run"
            ));
        }
        if cost.reserved > 0 && w.tokens_today + cost.reserved + cost.tokens > day {
            return LineVerdict::Wait;
        }
    }
    let requests = cost.requests;
    let over_rpm = limits.rpm.is_some_and(|rpm| requests > u64::from(rpm));
    let over_tpm = limits.tpm.is_some_and(|tpm| w.tokens >= tpm);
    if over_rpm || over_tpm {
        LineVerdict::Wait
    } else {
        LineVerdict::Go
    }
}

/// A key's refusal while it stands: until when, under which limits, and the answer.
#[derive(Clone)]
pub(crate) struct Standing {
    until_ms: u64,
    limits: KeyLimits,
    refusal: ApiError,
    headers: HeaderMap,
}

/// This gateway's standing refusals, by key id (its `Auth` holds them): bounded by the
/// keys that exist, one entry each at most, gone when it lapses.
pub(crate) type Refusals = crate::timed::Remembered<String, Standing>;

/// Remembers that `key_id` (with `limits`) was refused at `now_ms` with `refusal`, whose
/// `Retry-After` says when its window ends.
pub(crate) fn remember(
    refusals: &Refusals,
    key_id: &str,
    limits: &KeyLimits,
    now_ms: u64,
    refusal: &ApiError,
    headers: &HeaderMap,
) {
    // Retry-After is whole seconds up to the window's end (a minute's, or midnight UTC),
    // both on whole seconds: from the start of this second it is the end exactly.
    let until_ms = now_ms - now_ms % 1000 + refusal.retry_after().unwrap_or(1) * 1000;
    let until = std::time::Instant::now() + std::time::Duration::from_millis(until_ms.saturating_sub(now_ms));
    let (refusal, headers) = (refusal.clone(), headers.clone());
    refusals.remember_until(key_id.to_string(), Standing { until_ms, limits: *limits, refusal, headers }, until);
}

/// The refusal `key_id` still stands under at `now_ms`, with the same limits (a key whose
/// limits changed is counted again), its `Retry-After` brought up to date.
pub(crate) fn still_refused(refusals: &Refusals, key_id: &str, limits: &KeyLimits, now_ms: u64) -> Option<Response> {
    let st = refusals.get(&key_id.to_string()).filter(|st| st.until_ms > now_ms && st.limits == *limits)?;
    let left = (st.until_ms - now_ms).div_ceil(1000).max(1);
    Some(refused(st.refusal.with_retry_after(left), st.headers))
}

/// How long a queue a task manager called full is refused by this gateway on its own.
/// Short: a task finishing frees a place, and the next request after this asks again.
const FULL_REMEMBERED: std::time::Duration = std::time::Duration::from_millis(50);

/// The queues a task manager called full lately, by model and class (this gateway's
/// `Auth` holds them).
pub(crate) type FullQueues =
    crate::timed::Remembered<(String, bitinglip_bus_schema::Priority), bitinglip_bus_schema::WireError>;

/// What a gateway decides before a request becomes a task: its request slots
/// (`gateway.max_concurrent_requests`) and the queues a task manager called full lately
/// (each remembered for [`FULL_REMEMBERED`]). The gateway owns it; handlers get it as an
/// extension.
pub(crate) struct Admission {
    slots: Arc<tokio::sync::Semaphore>,
    max: usize,
    /// The queues a task manager called full lately.
    pub(crate) full: FullQueues,
}

impl Admission {
    /// `max` request slots, and no queue known full.
    pub(crate) fn new(max: usize) -> Self {
        Self { slots: Arc::new(tokio::sync::Semaphore::new(max)), max, full: FullQueues::new(FULL_REMEMBERED) }
    }

    /// Takes one of the request slots, or answers 503 with `Retry-After` at once: a flood
    /// of requests costs a bounded amount of memory.
    pub(crate) fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        self.slots.clone().try_acquire_owned().map_err(|_| {
            ApiError::from(bitinglip_bus_schema::WireError::new(
                bitinglip_bus_schema::ErrorKind::Unavailable,
                format!("the gateway has {} requests in progress; retry later", self.max),
            ))
        })
    }
}

/// Adds `headers` to `resp`.
pub(crate) fn with_headers(mut resp: Response, headers: HeaderMap) -> Response {
    resp.headers_mut().extend(headers);
    resp
}

/// A refusal with its headers.
pub(crate) fn refused(err: ApiError, headers: HeaderMap) -> Response {
    with_headers(err.into_response(), headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(requests: u64, tokens: u64, tokens_today: u64) -> Window {
        Window { requests, tokens, tokens_today, reset_secs: 12 }
    }

    #[test]
    fn under_every_limit_the_headers_say_what_is_left() {
        let limits = KeyLimits { rpm: Some(3), tpm: Some(100), tokens_per_day: Some(1000), max_concurrent: None };
        let (h, refusal) = verdict(&limits, &window(1, 40, 500), 0);
        assert!(refusal.is_none());
        assert_eq!(h["x-ratelimit-remaining-requests"], "2");
        assert_eq!(h["x-ratelimit-reset-requests"], "12s");
        assert_eq!(h["x-ratelimit-remaining-tokens"], "60");
        assert_eq!(h["x-ratelimit-remaining-tokens-per-day"], "500");
    }

    #[test]
    fn a_batch_line_waits_for_the_minute_and_stops_when_the_day_is_spent() {
        let limits = KeyLimits { rpm: Some(3), tpm: Some(100), tokens_per_day: Some(1000), max_concurrent: None };
        let cost = |requests, reserved, tokens| LineCost { requests, reserved, tokens };
        assert_eq!(line_verdict(&limits, &window(2, 0, 0), cost(3, 0, 10)), LineVerdict::Go);
        let fourth = line_verdict(&limits, &window(3, 0, 0), cost(4, 0, 10));
        assert_eq!(fourth, LineVerdict::Wait, "the fourth request this minute");
        let spent = line_verdict(&limits, &window(0, 100, 0), cost(1, 0, 10));
        assert_eq!(spent, LineVerdict::Wait, "the minute's tokens are spent");
        assert!(matches!(line_verdict(&limits, &window(0, 0, 1000), cost(1, 0, 10)), LineVerdict::BudgetSpent(_)));
        // Running lines hold their max_tokens against the day; alone, a line runs anyway.
        assert_eq!(line_verdict(&limits, &window(0, 0, 900), cost(1, 90, 20)), LineVerdict::Wait);
        assert_eq!(line_verdict(&limits, &window(0, 0, 900), cost(1, 0, 200)), LineVerdict::Go);
        let free = line_verdict(&KeyLimits::default(), &window(1_000, 1_000, 1_000), cost(1_001, 9, 9));
        assert_eq!(free, LineVerdict::Go);
    }

    #[test]
    fn each_limit_refuses_with_429_and_a_retry_after() {
        let rpm = KeyLimits { rpm: Some(3), ..Default::default() };
        let (_, refusal) = verdict(&rpm, &window(4, 0, 0), 0);
        let resp = refusal.expect("over rpm").into_response();
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "12");
        let tpm = KeyLimits { tpm: Some(100), ..Default::default() };
        assert!(verdict(&tpm, &window(1, 100, 0), 0).1.is_some());
        let day = KeyLimits { tokens_per_day: Some(10), ..Default::default() };
        let (_, refusal) = verdict(&day, &window(1, 0, 10), 86_400_000 - 30_000);
        assert_eq!(refusal.expect("over the day").into_response().headers()["retry-after"], "30");
        assert!(verdict(&KeyLimits::default(), &window(1_000_000, 0, 0), 0).0.is_empty());
    }
}

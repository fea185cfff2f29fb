//! Counters of what API keys use, on JetStream's distributed counters: a publish with a
//! `Nats-Incr` header adds to its subject's total and the acknowledgement carries the new
//! total, so counting a request is one round trip and never a compare-and-swap, however
//! many gateways and workers count at once.
//!
//! - Rates (stream `…_RATES`, in memory, two minutes): requests and tokens of each key in
//!   each minute, for `rpm` and `tpm` limits across every gateway.
//! - Usage (stream `…_USAGE`, on disk, 400 days): requests, prompt and completion tokens of
//!   each key and model per day (UTC), and each key's tokens per day (for `tokens_per_day`).
//!   A task manager adds a finished task's usage (workers ask it, `task.usage`), with
//!   message ids derived from the task, so adding it again (a redelivery after a crash)
//!   is deduplicated.

use std::collections::BTreeMap;

use async_nats::{jetstream, HeaderMap};
use bitinglip_bus_schema::decode_token;
use futures::future::try_join_all;
use serde::Deserialize;

use super::{Store, StoreError};

const RATES: &str = "rates stream";
const USAGE: &str = "usage stream";

/// The counters.
pub struct Counters<'a> {
    store: &'a Store,
}

impl Store {
    /// The rate and usage counters.
    pub fn counters(&self) -> Counters<'_> {
        Counters { store: self }
    }
}

/// The UTC day (`YYYY-MM-DD`) of `ms` since the epoch (pure).
pub fn day_of(ms: u64) -> String {
    // Howard Hinnant's days-to-civil.
    let z = (ms / 86_400_000) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// A key's use of the current minute and day, as a limit check sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Requests this minute, this one included.
    pub requests: u64,
    /// Tokens this minute (of finished tasks).
    pub tokens: u64,
    /// Tokens today (UTC, of finished tasks).
    pub tokens_today: u64,
    /// Seconds until the minute ends.
    pub reset_secs: u64,
}

/// One key's use of one model on one day.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageRow {
    /// The API key's id.
    pub key: String,
    /// The model.
    pub model: String,
    /// The UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// Tasks finished.
    pub requests: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
}

/// The usage key of tasks without an owner (the CLI's, as `admin`).
pub const NO_KEY: &str = "-";

/// What one finished task used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskUsage<'a> {
    /// The task (its id makes the additions idempotent).
    pub task_id: &'a str,
    /// The API key's id.
    pub key: &'a str,
    /// The model.
    pub model: &'a str,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// When it finished, ms since the epoch.
    pub at_ms: u64,
}

#[derive(Deserialize)]
struct Total {
    val: String,
}

fn total_of(payload: &[u8]) -> u64 {
    serde_json::from_slice::<Total>(payload).ok().and_then(|t| t.val.parse().ok()).unwrap_or(0)
}

impl Counters<'_> {
    async fn add(
        &self,
        subject: String,
        by: u64,
        msg_id: Option<String>,
        what: &'static str,
    ) -> Result<u64, StoreError> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Incr", format!("+{by}").as_str());
        if let Some(id) = msg_id {
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        }
        let js = &self.store.inner.js;
        let ack = js
            .publish_with_headers(subject, headers, bytes::Bytes::new())
            .await
            .map_err(|e| StoreError::unavailable(what, e))?
            .await
            .map_err(|e| StoreError::unavailable(what, e))?;
        Ok(ack.value.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    async fn read<I>(&self, stream: &jetstream::stream::Stream<I>, subject: String) -> u64 {
        // No message yet is a total of zero.
        stream.direct_get_last_for_subject(subject).await.map(|m| total_of(&m.payload)).unwrap_or(0)
    }

    /// Counts one request of `key` and reads its tokens this minute and today: one round
    /// trip (the three run at once).
    pub async fn count_request(&self, key: &str, now_ms: u64) -> Result<Window, StoreError> {
        self.window(key, now_ms, true).await
    }

    /// The key's windows at `now_ms`, counting one request when `count`.
    async fn window(&self, key: &str, now_ms: u64, count: bool) -> Result<Window, StoreError> {
        let inner = &self.store.inner;
        let subjects = &inner.subjects;
        let minute = now_ms / 60_000;
        let rates = inner
            .js
            .get_stream_no_info(subjects.rates_stream())
            .await
            .map_err(|e| StoreError::unavailable(RATES, e))?;
        let usage = inner
            .js
            .get_stream_no_info(subjects.usage_stream())
            .await
            .map_err(|e| StoreError::unavailable(USAGE, e))?;
        let requests = async {
            let subject = subjects.rate_counter(key, minute, "requests");
            if count {
                self.add(subject, 1, None, RATES).await
            } else {
                Ok(self.read(&rates, subject).await)
            }
        };
        let (requests, tokens, tokens_today) = tokio::join!(
            requests,
            self.read(&rates, subjects.rate_counter(key, minute, "tokens")),
            self.read(&usage, subjects.day_tokens_counter(key, &day_of(now_ms))),
        );
        Ok(Window { requests: requests?, tokens, tokens_today, reset_secs: 60 - (now_ms / 1000) % 60 })
    }

    /// What [`Counters::count_request`] would see, without counting a request: for a
    /// caller that must wait its turn without spending the minute's requests on waiting
    /// (a batch's next line).
    pub async fn peek(&self, key: &str, now_ms: u64) -> Result<Window, StoreError> {
        self.window(key, now_ms, false).await
    }

    /// Adds a finished task's usage to its key's counters. Each addition carries a message
    /// id derived from the task, so adding the same task again within ten minutes changes
    /// nothing.
    pub async fn record(&self, u: &TaskUsage<'_>) -> Result<(), StoreError> {
        let subjects = &self.store.inner.subjects;
        let day = day_of(u.at_ms);
        let tokens = u.prompt_tokens + u.completion_tokens;
        let id = |field: &str| Some(format!("{}:{field}", u.task_id));
        let minute = u.at_ms / 60_000;
        let mut adds = vec![
            self.add(subjects.usage_counter(u.key, u.model, &day, "requests"), 1, id("requests"), USAGE),
            self.add(
                subjects.usage_counter(u.key, u.model, &day, "prompt_tokens"),
                u.prompt_tokens,
                id("prompt"),
                USAGE,
            ),
        ];
        adds.push(self.add(
            subjects.usage_counter(u.key, u.model, &day, "completion_tokens"),
            u.completion_tokens,
            id("completion"),
            USAGE,
        ));
        adds.push(self.add(subjects.day_tokens_counter(u.key, &day), tokens, id("day"), USAGE));
        adds.push(self.add(subjects.rate_counter(u.key, minute, "tokens"), tokens, None, RATES));
        try_join_all(adds).await.map(drop)
    }

    /// Usage per key, model and day, of one key or all, for days from `from` to `to`
    /// (`YYYY-MM-DD`, inclusive; open when absent), sorted by day, key and model.
    pub async fn usage(
        &self,
        key: Option<&str>,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let inner = &self.store.inner;
        let subjects = &inner.subjects;
        // The last message of each subject holds its total.
        let messages =
            super::read_matching(&inner.js, subjects.usage_stream(), subjects.usage_counters(key), true, USAGE).await?;
        // `<root>.v1` is everything before the filter's last five tokens.
        let root_tokens = subjects.usage_counters(None).split('.').count() - 5;
        let mut rows: BTreeMap<(String, String, String), UsageRow> = BTreeMap::new();
        for (subject, payload) in messages {
            let Some((k, model, day, field)) = parse_usage_subject(&subject, root_tokens) else { continue };
            let in_range = from.is_none_or(|f| day.as_str() >= f) && to.is_none_or(|t| day.as_str() <= t);
            if !in_range {
                continue;
            }
            let row = rows.entry((day.clone(), k.clone(), model.clone())).or_insert_with(|| UsageRow {
                key: k,
                model,
                day,
                ..Default::default()
            });
            let total = total_of(&payload);
            match field.as_str() {
                "requests" => row.requests = total,
                "prompt_tokens" => row.prompt_tokens = total,
                "completion_tokens" => row.completion_tokens = total,
                _ => {}
            }
        }
        Ok(rows.into_values().collect())
    }
}

/// (key, model, day, field) of a usage counter's subject, whose first `root_tokens`
/// tokens are the root and version (pure).
fn parse_usage_subject(subject: &str, root_tokens: usize) -> Option<(String, String, String, String)> {
    let tokens: Vec<&str> = subject.split('.').collect();
    let ["usage", key, model, day, field] = tokens.get(root_tokens..)? else { return None };
    Some((decode_token(key).ok()?, decode_token(model).ok()?, day.to_string(), field.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_utc_calendar_days() {
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(day_of(86_400_000 - 1), "1970-01-01");
        assert_eq!(day_of(951_782_400_000), "2000-02-29");
        assert_eq!(day_of(1_795_737_600_000), "2026-11-27");
        assert_eq!(day_of(1_795_737_600_000 - 1), "2026-11-26");
    }

    #[test]
    fn a_usage_subject_reads_back_as_key_model_day_and_field() {
        let s = bitinglip_bus_schema::Subjects::default();
        let subject = s.usage_counter("k1", "Qwen/Qwen2.5-0.5B", "2026-11-27", "prompt_tokens");
        assert_eq!(
            parse_usage_subject(&subject, 2),
            Some(("k1".into(), "Qwen/Qwen2.5-0.5B".into(), "2026-11-27".into(), "prompt_tokens".into()))
        );
        assert_eq!(parse_usage_subject("bitinglip.v1.task.x.events", 2), None);
        let model_named_usage = s.usage_counter("k1", "usage", "2026-11-27", "requests");
        assert_eq!(parse_usage_subject(&model_named_usage, 2).map(|p| p.1), Some("usage".into()));
        assert_eq!(total_of(br#"{"val":"42"}"#), 42);
        assert_eq!(total_of(b"garbage"), 0);
    }
}

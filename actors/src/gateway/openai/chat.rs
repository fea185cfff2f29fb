//! `POST /v1/chat/completions` and `POST /v1/completions`: their shapes over the
//! generation pipeline. A chat completion answers in `chat.completion` (chunks:
//! `chat.completion.chunk`), a legacy completion of a raw prompt in `text_completion`;
//! both stream through `chat/stream.rs`.

use std::sync::Arc;

use axum::{
    body::Body,
    extract::{Extension, State},
    http::HeaderMap,
    response::Response,
};
use bitinglip_bus_schema::{ApiKey, ChatParams};

use super::pipeline::{self, Asked, Events, Finished, Shape, Streamed};
use crate::{
    gateway::{
        access::limits::FullQueues,
        error::ApiError,
        openai::{self, ChatCompletion, TextCompletion, ToolMode},
    },
    NodeContext,
};

mod stream;

/// A chat completion, whole or streamed.
///
/// With `stream: true` the answer is `text/event-stream`: one `data: <ChatCompletionChunk>`
/// event per piece of text (or of a tool call's arguments), then `data: [DONE]`. A client
/// that disconnects cancels the task. `Idempotency-Key` makes a retry follow the first
/// request's task. The answer's `x-task-id` is the task's id in the task API. Runs in the
/// `gateway` span, a child of the caller's `traceparent` when it sent one.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai",
    request_body = openai::ChatCompletionRequest,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "the same key and body: the same task, once"),
        ("traceparent" = Option<String>, Header, description = "W3C trace context of the caller"),
    ),
    responses((status = 200, description = "the completion, or with `stream: true` its chunks as server-sent events",
        headers(("x-task-id" = String, description = "the task's id")),
        content((openai::ChatCompletion = "application/json"), (String = "text/event-stream")))))]
pub(crate) async fn chat_completions(
    State(ctx): State<NodeContext>,
    Extension(key): Extension<ApiKey>,
    Extension(full): Extension<Arc<FullQueues>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    pipeline::run::<Chat>(ctx, key, full, headers, body).await
}

/// A legacy text completion of a raw prompt (no chat template), whole or streamed.
///
/// With `stream: true` the answer is `text/event-stream`: one `data: <TextCompletion>`
/// event per piece of text, then `data: [DONE]`. `echo`, `suffix` and `best_of` above 1
/// are refused. Otherwise as `/v1/chat/completions`: the same queue, cancel on disconnect,
/// `Idempotency-Key` and `x-task-id`.
#[utoipa::path(post, path = "/v1/completions", tag = "openai",
    request_body = openai::CompletionRequest,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "the same key and body: the same task, once"),
        ("traceparent" = Option<String>, Header, description = "W3C trace context of the caller"),
    ),
    responses((status = 200, description = "the completion, or with `stream: true` its chunks as server-sent events",
        headers(("x-task-id" = String, description = "the task's id")),
        content((openai::TextCompletion = "application/json"), (String = "text/event-stream")))))]
pub(crate) async fn completions(
    State(ctx): State<NodeContext>,
    Extension(key): Extension<ApiKey>,
    Extension(full): Extension<Arc<FullQueues>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    pipeline::run::<Text>(ctx, key, full, headers, body).await
}

/// Which of the two completion APIs an answer is in.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Api {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Text,
}

/// What a completion request asked of its answer's shape.
#[derive(Debug, Clone)]
struct Completion {
    api: Api,
    model: String,
    include_usage: bool,
    mode: ToolMode,
    logprobs: bool,
}

impl Completion {
    fn of(api: Api, chat: &ChatParams, include_usage: bool) -> Self {
        Self {
            api,
            model: chat.model.clone(),
            include_usage,
            mode: ToolMode::of(chat),
            logprobs: chat.logprobs.is_some(),
        }
    }

    /// The answer's id, from the task's.
    fn id(&self, task_id: &str) -> String {
        let prefix = if self.api == Api::Chat { "chatcmpl" } else { "cmpl" };
        format!("{prefix}-{task_id}")
    }

    fn events(self, s: Streamed) -> Events {
        let answering = stream::Answering {
            api: self.api,
            id: self.id(s.task_id.as_str()),
            created: s.created,
            model: self.model,
            include_usage: self.include_usage,
            mode: self.mode,
            logprobs: self.logprobs,
            task_id: s.task_id.to_string(),
        };
        Box::pin(stream::sse_events(s.watch, s.cancel, answering, s.relay))
    }
}

/// What the shared fields of a completion request ask of its delivery: a stream, the
/// usage chunk, waiting for the model.
fn delivery(s: &openai::Sampling) -> (bool, bool, bool) {
    (s.stream, s.stream_options.as_ref().is_some_and(|o| o.include_usage), s.wait_for_model.unwrap_or(true))
}

/// `/v1/chat/completions`.
pub(crate) struct Chat(Completion);

impl Chat {
    /// The shape of a chat request's answer (as a batch line's, which never streams).
    pub(crate) fn of(chat: &ChatParams) -> Self {
        Chat(Completion::of(Api::Chat, chat, false))
    }

    /// A `POST /v1/chat/completions` body.
    pub(crate) fn parse(body: &[u8]) -> Result<Asked<Self>, ApiError> {
        let r = openai::parse_request(body)?;
        let (stream, include_usage, wait_for_model) = delivery(&r.sampling);
        let chat = r.into_chat()?;
        Ok(Asked { shape: Chat(Completion::of(Api::Chat, &chat, include_usage)), chat, stream, wait_for_model })
    }
}

impl Shape for Chat {
    const ROUTE: &'static str = "/v1/chat/completions";
    type Answer = ChatCompletion;

    async fn read(_: &NodeContext, _: &ApiKey, body: &[u8]) -> Result<Asked<Self>, ApiError> {
        Self::parse(body)
    }

    fn answer(&self, f: &Finished) -> ChatCompletion {
        let c = &self.0;
        let forced = c.mode != ToolMode::Free;
        let id = c.id(f.task_id.as_str());
        openai::completion(&id, f.created, &c.model, f.text.clone(), &f.done, forced, c.logprobs)
    }

    fn events(self, streamed: Streamed) -> Events {
        self.0.events(streamed)
    }
}

/// `/v1/completions`.
pub(crate) struct Text(Completion);

impl Text {
    /// The shape of a legacy completion request's answer (as a batch line's).
    pub(crate) fn of(chat: &ChatParams) -> Self {
        Text(Completion::of(Api::Text, chat, false))
    }

    /// A `POST /v1/completions` body.
    pub(crate) fn parse(body: &[u8]) -> Result<Asked<Self>, ApiError> {
        let r = openai::parse_completion(body)?;
        let (stream, include_usage, wait_for_model) = delivery(&r.sampling);
        let chat = r.into_chat()?;
        Ok(Asked { shape: Text(Completion::of(Api::Text, &chat, include_usage)), chat, stream, wait_for_model })
    }
}

impl Shape for Text {
    const ROUTE: &'static str = "/v1/completions";
    type Answer = TextCompletion;

    async fn read(_: &NodeContext, _: &ApiKey, body: &[u8]) -> Result<Asked<Self>, ApiError> {
        Self::parse(body)
    }

    fn answer(&self, f: &Finished) -> TextCompletion {
        let c = &self.0;
        let lp = openai::legacy_logprobs(c.logprobs, &f.done.logprobs, 0);
        let choice = Some((f.text.clone(), lp, Some(f.done.finish_reason)));
        openai::text_completion(&c.id(f.task_id.as_str()), f.created, &c.model, choice, Some(&f.done.usage))
    }

    fn events(self, streamed: Streamed) -> Events {
        self.0.events(streamed)
    }
}

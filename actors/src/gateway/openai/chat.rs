//! `POST /v1/chat/completions` and `POST /v1/completions`: their shapes over the
//! generation pipeline. A chat completion answers in `chat.completion` (chunks:
//! `chat.completion.chunk`), a legacy completion of a raw prompt in `text_completion`;
//! both stream through `chat/stream.rs`.

use axum::response::Response;
use bitinglip_bus_schema::{ApiKey, ChatParams};
use serde::Serialize;

use super::pipeline::{self, Asked, Events, Finished, Shape, Streamed};
use crate::{
    gateway::{
        error::ApiError,
        openai::{self, ChatCompletion, TextCompletion, ToolMode},
        submit::{Call, TaskHeaders},
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
    params(TaskHeaders),
    responses((status = 200, description = "the completion, or with `stream: true` its chunks as server-sent events",
        headers(("x-task-id" = String, description = "the task's id")),
        content((openai::ChatCompletion = "application/json"), (String = "text/event-stream")))))]
pub(crate) async fn chat_completions(call: Call) -> Result<Response, ApiError> {
    pipeline::run::<Chat>(call).await
}

/// A legacy text completion of a raw prompt (no chat template), whole or streamed.
///
/// With `stream: true` the answer is `text/event-stream`: one `data: <TextCompletion>`
/// event per piece of text, then `data: [DONE]`. `echo`, `suffix` and `best_of` above 1
/// are refused. Otherwise as `/v1/chat/completions`: the same queue, cancel on disconnect,
/// `Idempotency-Key` and `x-task-id`.
#[utoipa::path(post, path = "/v1/completions", tag = "openai",
    request_body = openai::CompletionRequest,
    params(TaskHeaders),
    responses((status = 200, description = "the completion, or with `stream: true` its chunks as server-sent events",
        headers(("x-task-id" = String, description = "the task's id")),
        content((openai::TextCompletion = "application/json"), (String = "text/event-stream")))))]
pub(crate) async fn completions(call: Call) -> Result<Response, ApiError> {
    pipeline::run::<Text>(call).await
}

/// Which of the two completion APIs an answer is in.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Api {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Text,
}

/// What a completion request asked of its answer's shape: a chat completion
/// (`CHAT`) or a legacy one.
#[derive(Debug, Clone)]
pub(crate) struct Completion<const CHAT: bool> {
    model: String,
    include_usage: bool,
    mode: ToolMode,
    logprobs: bool,
}

/// `/v1/chat/completions`.
pub(crate) type Chat = Completion<true>;
/// `/v1/completions`.
pub(crate) type Text = Completion<false>;

/// A whole completion, in its API's shape.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum CompletionAnswer {
    Chat(ChatCompletion),
    Text(TextCompletion),
}

impl<const CHAT: bool> Completion<CHAT> {
    const API: Api = if CHAT { Api::Chat } else { Api::Text };

    /// The shape of a request's answer (as a batch line's, which never streams).
    pub(crate) fn of(chat: &ChatParams) -> Self {
        Self::with_usage(chat, false)
    }

    fn with_usage(chat: &ChatParams, include_usage: bool) -> Self {
        Self { model: chat.model.clone(), include_usage, mode: ToolMode::of(chat), logprobs: chat.logprobs.is_some() }
    }

    /// A request body of this API: the task, and what it asks of its delivery.
    pub(crate) fn parse(body: &[u8]) -> Result<Asked<Self>, ApiError> {
        // What the shared fields ask of the delivery: a stream, the usage chunk, waiting
        // for the model.
        let asks = |s: &openai::Sampling| {
            (s.stream, s.stream_options.as_ref().is_some_and(|o| o.include_usage), s.wait_for_model.unwrap_or(true))
        };
        let ((stream, include_usage, wait_for_model), chat) = if CHAT {
            let r = openai::parse_request(body)?;
            (asks(&r.sampling), r.into_chat()?)
        } else {
            let r = openai::parse_completion(body)?;
            (asks(&r.sampling), r.into_chat()?)
        };
        Ok(Asked { shape: Self::with_usage(&chat, include_usage), chat, stream, wait_for_model })
    }

    /// The answer's id, from the task's.
    fn id(&self, task_id: &str) -> String {
        let prefix = if CHAT { "chatcmpl" } else { "cmpl" };
        format!("{prefix}-{task_id}")
    }
}

impl<const CHAT: bool> Shape for Completion<CHAT> {
    const ROUTE: &'static str = if CHAT { "/v1/chat/completions" } else { "/v1/completions" };
    type Answer = CompletionAnswer;

    async fn read(_: &NodeContext, _: &ApiKey, body: &[u8]) -> Result<Asked<Self>, ApiError> {
        Self::parse(body)
    }

    fn answer(&self, f: &Finished) -> CompletionAnswer {
        let id = self.id(f.task_id.as_str());
        if CHAT {
            let forced = self.mode != ToolMode::Free;
            let text = f.text.clone();
            CompletionAnswer::Chat(openai::completion(
                &id,
                f.created,
                &self.model,
                text,
                &f.done,
                forced,
                self.logprobs,
            ))
        } else {
            let lp = openai::legacy_logprobs(self.logprobs, &f.done.logprobs, 0);
            let choice = Some((f.text.clone(), lp, Some(f.done.finish_reason)));
            CompletionAnswer::Text(openai::text_completion(&id, f.created, &self.model, choice, Some(&f.done.usage)))
        }
    }

    fn events(self, s: Streamed) -> Events {
        let answering = stream::Answering {
            api: Self::API,
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

//! A streamed response: the typed events (`response.created` … `response.completed`) of a
//! task's answer as it is generated, each with its sequence number.

use axum::response::sse::Event;
use bitinglip_bus_schema::{ApiKey, TaskCompleted, ToolCall};
use bitinglip_client::{CancelOnDrop, Relayed, TaskWatch};
use serde_json::{json, Value};

use super::input::Prepared;
use super::{
    call_item, keep, message_item, output_items, response_object, text_part, Ids, OutputItem, ResponseObject, Status,
};
use crate::gateway::openai::ToolMode;
use crate::{guided, NodeContext};

/// A streamed response in progress.
pub(super) struct Run {
    pub(super) ctx: NodeContext,
    pub(super) key: ApiKey,
    pub(super) prepared: Prepared,
    pub(super) ids: Ids,
    pub(super) mode: ToolMode,
    pub(super) model: String,
    pub(super) created: u64,
}

/// Sends typed events with their sequence numbers.
struct Events {
    tx: tokio::sync::mpsc::Sender<Event>,
    seq: u64,
}

impl Events {
    /// Sends `kind` with `data`; false when the client has gone.
    async fn send(&mut self, kind: &str, mut data: Value) -> bool {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.seq);
        self.seq += 1;
        self.tx.send(Event::default().event(kind).data(data.to_string())).await.is_ok()
    }
}

impl Run {
    fn object(&self, status: Status, output: Vec<OutputItem>, done: Option<&TaskCompleted>) -> ResponseObject {
        response_object(&self.ids, &self.model, self.created, &self.prepared.echo, status, output, done)
    }

    pub(super) async fn stream(
        self,
        mut watch: TaskWatch,
        mut cancel: CancelOnDrop,
        tx: tokio::sync::mpsc::Sender<Event>,
    ) {
        let mut ev = Events { tx, seq: 0 };
        let ids = &self.ids;
        let in_progress = self.object(Status::InProgress, vec![], None);
        if !ev.send("response.created", json!({"response": in_progress})).await
            || !ev.send("response.in_progress", json!({"response": in_progress})).await
        {
            return;
        }
        // The first item opens now for text or a named call; `required` calls come whole.
        let opened = match &self.mode {
            ToolMode::Free => ev
                .send(
                    "response.output_item.added",
                    json!({"output_index": 0, "item": message_item(ids, "", Status::InProgress)}),
                )
                .await
                && ev
                    .send(
                        "response.content_part.added",
                        json!({"item_id": ids.message, "output_index": 0, "content_index": 0, "part": text_part("")}),
                    )
                    .await,
            ToolMode::Named(name) => {
                let call = ToolCall { id: guided::call_id(&ids.task, 0), name: name.clone(), arguments: String::new() };
                ev.send(
                    "response.output_item.added",
                    json!({"output_index": 0, "item": call_item(ids, 0, &call, Status::InProgress)}),
                )
                .await
            }
            ToolMode::Required => true,
        };
        if !opened {
            return;
        }
        let mut text = String::new();
        let done = loop {
            match watch.next().await {
                Some(Relayed::Started { .. }) => {}
                Some(Relayed::Text { text: t, .. }) => {
                    text.push_str(&t);
                    let sent = match &self.mode {
                        ToolMode::Free if !t.is_empty() => {
                            ev.send(
                                "response.output_text.delta",
                                json!({"item_id": ids.message, "output_index": 0, "content_index": 0, "delta": t, "logprobs": []}),
                            )
                            .await
                        }
                        ToolMode::Named(_) => {
                            ev.send(
                                "response.function_call_arguments.delta",
                                json!({"item_id": ids.call_item(0), "output_index": 0, "delta": t}),
                            )
                            .await
                        }
                        _ => true,
                    };
                    if !sent {
                        return;
                    }
                }
                Some(Relayed::Done(done)) => break done,
                Some(Relayed::Failed(err)) => {
                    cancel.disarm();
                    crate::metrics::metrics().requests.with_label_values(&[&self.model, err.kind.as_str()]).inc();
                    let failed = self.object(Status::Failed, vec![], None).failed(err.kind.as_str(), &err.message);
                    ev.send("response.failed", json!({"response": failed})).await;
                    return;
                }
                None => return,
            }
        };
        cancel.disarm();
        crate::metrics::metrics().requests.with_label_values(&[&self.model, "ok"]).inc();
        let output = output_items(ids, &self.mode, &text, &done);
        // Close what was opened, then announce the items that come whole.
        for (index, item) in output.iter().enumerate() {
            let streamed = match item {
                OutputItem::Message { .. } => self.mode == ToolMode::Free && index == 0,
                OutputItem::FunctionCall { .. } => matches!(self.mode, ToolMode::Named(_)),
            };
            if !streamed && !ev.send("response.output_item.added", json!({"output_index": index, "item": item})).await {
                return;
            }
            let closed = if let OutputItem::FunctionCall { id, arguments, .. } = item {
                ev.send(
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": index, "arguments": arguments}),
                )
                .await
            } else {
                let part = text_part(&text);
                ev.send(
                    "response.output_text.done",
                    json!({"item_id": ids.message, "output_index": index, "content_index": 0, "text": text, "logprobs": []}),
                )
                .await
                    && ev
                        .send(
                            "response.content_part.done",
                            json!({"item_id": ids.message, "output_index": index, "content_index": 0, "part": part}),
                        )
                        .await
            };
            if !closed || !ev.send("response.output_item.done", json!({"output_index": index, "item": item})).await {
                return;
            }
        }
        let object = self.object(Status::Completed, output, Some(&done));
        if let Err(err) = keep(&self.ctx, &self.key, &self.prepared, ids, &text, &done, &object).await {
            let failed = object.clone().failed(err.code(), "the response could not be stored");
            ev.send("response.failed", json!({"response": failed})).await;
            return;
        }
        let kind = if object.status == Status::Incomplete { "response.incomplete" } else { "response.completed" };
        ev.send(kind, json!({"response": object})).await;
    }
}

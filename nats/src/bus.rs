//! The typed bus: every payload in an [`Envelope`], MessagePack with named fields, and a
//! W3C `traceparent` header on every message so one request stays one trace.

use std::{sync::Arc, time::Duration};

use async_nats::{jetstream, Client, HeaderMap, Message};
use bitinglip_bus_schema::{self as schema, CodecError, Envelope, Subjects, WireError};
use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

use crate::{trace::TraceParent, BusError};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A decoded message: its envelope, trace context and reply subject.
#[derive(Debug)]
pub struct Incoming<T> {
    /// The envelope.
    pub envelope: Envelope<T>,
    /// The sender's trace context, when it sent one.
    pub trace: Option<TraceParent>,
}

/// A connected bus, cheap to clone.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    js: jetstream::Context,
    subjects: Subjects,
    node_id: String,
    request_timeout: Duration,
    /// The server's max payload as last read, and when (ms since the epoch): reading the
    /// client's server info clones it whole, too dear for every message decoded.
    max_payload: std::sync::atomic::AtomicU64,
    max_payload_read_ms: std::sync::atomic::AtomicU64,
}

/// How long a reading of the server's max payload is used (a reconnect may reach a
/// server with another limit).
const MAX_PAYLOAD_FRESH_MS: u64 = 1000;

impl Inner {
    fn new(
        client: Client,
        js: jetstream::Context,
        subjects: Subjects,
        node_id: String,
        request_timeout: Duration,
    ) -> Self {
        Self {
            client,
            js,
            subjects,
            node_id,
            request_timeout,
            max_payload: std::sync::atomic::AtomicU64::new(0),
            max_payload_read_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").field("node_id", &self.inner.node_id).finish_non_exhaustive()
    }
}

impl Bus {
    /// Wraps a connected client.
    pub fn new(client: Client, subjects: Subjects, node_id: impl Into<String>, request_timeout: Duration) -> Self {
        let js = jetstream::new(client.clone());
        Self { inner: Arc::new(Inner::new(client, js, subjects, node_id.into(), request_timeout)) }
    }

    /// The same connection reaching JetStream in `domain` (through a leaf node): every
    /// stream and bucket operation then goes to `$JS.<domain>.API`.
    pub fn in_jetstream_domain(self, domain: Option<&str>) -> Self {
        let Some(domain) = domain else { return self };
        let inner = &self.inner;
        let js = jetstream::with_domain(inner.client.clone(), domain);
        Self {
            inner: Arc::new(Inner::new(
                inner.client.clone(),
                js,
                inner.subjects.clone(),
                inner.node_id.clone(),
                inner.request_timeout,
            )),
        }
    }

    /// The raw client.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The JetStream context (for the storage layer only).
    pub(crate) fn jetstream(&self) -> &jetstream::Context {
        &self.inner.js
    }

    /// Subject builders.
    pub fn subjects(&self) -> &Subjects {
        &self.inner.subjects
    }

    /// This node's id (the envelope's `source`).
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// The server's max payload (what one message may carry).
    pub fn max_payload(&self) -> usize {
        use std::sync::atomic::Ordering::Relaxed;
        let inner = &self.inner;
        let now = now_ms();
        if now.saturating_sub(inner.max_payload_read_ms.load(Relaxed)) > MAX_PAYLOAD_FRESH_MS {
            let read = inner.client.server_info().max_payload.max(1024) as u64;
            inner.max_payload.store(read, Relaxed);
            inner.max_payload_read_ms.store(now, Relaxed);
        }
        inner.max_payload.load(Relaxed) as usize
    }

    /// Wraps `body` in an envelope from this node and encodes it.
    pub fn encode<T: Serialize>(&self, body: &T) -> Result<Bytes, BusError> {
        let env = Envelope::new(ulid::Ulid::new().to_string(), now_ms(), self.node_id(), body);
        Ok(Bytes::from(schema::encode(&env)?))
    }

    /// Decodes a message's envelope, refusing payloads over the server's max payload.
    pub fn decode<T: DeserializeOwned>(&self, msg: &Message) -> Result<Incoming<T>, CodecError> {
        let envelope = schema::decode(&msg.payload, self.max_payload())?;
        Ok(Incoming { envelope, trace: trace_of(msg) })
    }

    /// Decodes a task event (the relay's message per token): the short path for chunks
    /// ([`schema::decode_event`]), and no trace context read (a relay has no use for it).
    pub fn decode_event(&self, msg: &Message) -> Result<schema::TaskEvent, CodecError> {
        schema::decode_event(&msg.payload, self.max_payload())
    }

    /// Headers carrying the trace on: the current span when spans are exported (so the
    /// receiver's span has its real parent), else a child of `trace` (or a new root).
    pub fn headers(trace: Option<&TraceParent>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let tp = TraceParent::current()
            .unwrap_or_else(|| trace.map(TraceParent::child).unwrap_or_else(TraceParent::new_root));
        headers.insert(crate::trace::TRACEPARENT, tp.to_string().as_str());
        headers
    }

    /// Publishes `body` on `subject` with `headers` made once for many messages (a task's
    /// chunks: one subject and one trace for all of them, built once rather than per
    /// token). Core NATS, as [`Bus::publish`].
    pub async fn publish_prepared<T: Serialize>(
        &self,
        subject: &async_nats::Subject,
        headers: &HeaderMap,
        body: &T,
    ) -> Result<(), BusError> {
        let payload = self.encode(body)?;
        self.inner
            .client
            .publish_with_headers(subject.clone(), headers.clone(), payload)
            .await
            .map_err(|e| BusError::Publish { subject: subject.to_string(), message: e.to_string() })
    }

    /// Publishes `body` on `subject` (core NATS: no acknowledgement, no round trip).
    pub async fn publish<T: Serialize>(
        &self,
        subject: String,
        body: &T,
        trace: Option<&TraceParent>,
    ) -> Result<(), BusError> {
        let payload = self.encode(body)?;
        self.inner
            .client
            .publish_with_headers(subject.clone(), Self::headers(trace), payload)
            .await
            .map_err(|e| BusError::Publish { subject, message: e.to_string() })
    }

    /// Sends a request and decodes the reply's body. `timeout` defaults to the configured
    /// request timeout.
    pub(crate) async fn request<Req: Serialize, Rep: DeserializeOwned>(
        &self,
        subject: String,
        body: &Req,
        trace: Option<&TraceParent>,
        timeout: Option<Duration>,
    ) -> Result<Rep, BusError> {
        let payload = self.encode(body)?;
        let request = async_nats::Request::new()
            .payload(payload)
            .headers(Self::headers(trace))
            .timeout(Some(timeout.unwrap_or(self.inner.request_timeout)));
        let reply = self.inner.client.send_request(subject.clone(), request).await.map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::TimedOut => BusError::Timeout { subject: subject.clone() },
            async_nats::RequestErrorKind::NoResponders => BusError::NoResponders { subject: subject.clone() },
            _ => BusError::Request { subject: subject.clone(), message: e.to_string() },
        })?;
        Ok(schema::decode::<Rep>(&reply.payload, self.max_payload().max(reply.payload.len()))?.body)
    }

    /// Sends `req` on its subject and reads its answer: the server's error, or the bus's
    /// (no responder, a timeout) as a [`WireError`], when there is none.
    pub async fn call<R: schema::Request>(&self, req: &R) -> Result<<R::Reply as schema::Reply>::Answer, WireError> {
        self.call_with(req, None, None).await
    }

    /// [`Bus::call`] continuing `trace`, waiting up to `timeout` (the configured request
    /// timeout by default).
    pub async fn call_with<R: schema::Request>(
        &self,
        req: &R,
        trace: Option<&TraceParent>,
        timeout: Option<Duration>,
    ) -> Result<<R::Reply as schema::Reply>::Answer, WireError> {
        schema::Reply::into_answer(self.ask(req, trace, timeout).await.map_err(|e| WireError::from(&e))?)
    }

    /// Sends `req` on its subject and reads its reply whole, with the bus's own error: for
    /// a caller that tells a bus that heals (no responder, a timeout) from an answer.
    pub async fn ask<R: schema::Request>(
        &self,
        req: &R,
        trace: Option<&TraceParent>,
        timeout: Option<Duration>,
    ) -> Result<R::Reply, BusError> {
        self.request(req.subject(self.subjects()), req, trace, timeout).await
    }

    /// [`Bus::call`] for a request on `owner`'s subjects.
    pub async fn call_as<R: schema::OwnerRequest>(
        &self,
        owner: Option<&str>,
        req: &R,
    ) -> Result<<R::Reply as schema::Reply>::Answer, WireError> {
        let reply = self.ask_as(owner, req, None, None).await.map_err(|e| WireError::from(&e))?;
        schema::Reply::into_answer(reply)
    }

    /// [`Bus::ask`] for a request on `owner`'s subjects.
    pub async fn ask_as<R: schema::OwnerRequest>(
        &self,
        owner: Option<&str>,
        req: &R,
        trace: Option<&TraceParent>,
        timeout: Option<Duration>,
    ) -> Result<R::Reply, BusError> {
        self.request(req.subject(self.subjects(), owner), req, trace, timeout).await
    }

    /// Answers a request; a message without a reply subject is ignored.
    pub async fn reply<T: Serialize>(&self, msg: &Message, body: &T) -> Result<(), BusError> {
        let Some(reply) = msg.reply.clone() else { return Ok(()) };
        let payload = self.encode(body)?;
        let headers = Self::headers(trace_of(msg).as_ref());
        self.inner
            .client
            .publish_with_headers(reply.clone(), headers, payload)
            .await
            .map_err(|e| BusError::Publish { subject: reply.to_string(), message: e.to_string() })
    }

    /// Answers a request that came through a NATS service endpoint, so the service API's
    /// stats (`nats micro stats`) count it. A message without a reply subject is ignored.
    pub async fn respond<T: Serialize>(&self, req: &async_nats::service::Request, body: &T) -> Result<(), BusError> {
        if req.message.reply.is_none() {
            return Ok(());
        }
        let payload = self.encode(body)?;
        let headers = Self::headers(trace_of(&req.message).as_ref());
        req.respond_with_headers(Ok(payload), headers)
            .await
            .map_err(|e| BusError::Publish { subject: req.message.subject.to_string(), message: e.to_string() })
    }

    /// Starts a NATS service (`nats micro ls | info | stats` show it) whose endpoints
    /// use `queue_group`, so each request is answered by one instance.
    pub async fn service(
        &self,
        name: &str,
        description: &str,
        queue_group: &str,
    ) -> Result<async_nats::service::Service, BusError> {
        use async_nats::service::ServiceExt;
        self.inner
            .client
            .service_builder()
            .description(description)
            .queue_group(queue_group)
            .start(name, env!("CARGO_PKG_VERSION"))
            .await
            .map_err(|e| BusError::Subscribe { subject: format!("$SRV.*.{name}"), message: e.to_string() })
    }

    /// Adds an endpoint named `name` on `subject` to `service`.
    pub async fn endpoint(
        &self,
        service: &async_nats::service::Service,
        name: &str,
        subject: String,
    ) -> Result<async_nats::service::endpoint::Endpoint, BusError> {
        service
            .endpoint_builder()
            .name(name)
            .add(subject.clone())
            .await
            .map_err(|e| BusError::Subscribe { subject, message: e.to_string() })
    }

    /// Subscribes to `subject`.
    pub async fn subscribe(&self, subject: String) -> Result<async_nats::Subscriber, BusError> {
        self.inner
            .client
            .subscribe(subject.clone())
            .await
            .map_err(|e| BusError::Subscribe { subject, message: e.to_string() })
    }

    /// Subscribes to `subject` in queue group `group` (each message goes to one member).
    pub async fn queue_subscribe(&self, subject: String, group: String) -> Result<async_nats::Subscriber, BusError> {
        self.inner
            .client
            .queue_subscribe(subject.clone(), group)
            .await
            .map_err(|e| BusError::Subscribe { subject, message: e.to_string() })
    }
}

/// The trace context in a message's headers, when it has a valid one.
pub fn trace_of(msg: &Message) -> Option<TraceParent> {
    msg.headers.as_ref().and_then(|h| h.get(crate::trace::TRACEPARENT)).and_then(|v| TraceParent::parse(v.as_str()))
}

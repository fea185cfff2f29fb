//! Encoding and decoding of envelopes: MessagePack with named fields.

use serde::{de::DeserializeOwned, Serialize};

use crate::{envelope::SCHEMA_VERSION, Envelope, ErrorKind, WireError};

/// NATS's default max payload (1 MiB). Decoding refuses anything larger before parsing.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// Why a payload could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The payload is larger than the limit.
    #[error("payload of {size} bytes is over the limit of {limit} bytes")]
    TooLarge {
        /// Payload size.
        size: usize,
        /// The limit it broke.
        limit: usize,
    },
    /// Not a valid MessagePack envelope of the expected type.
    #[error("cannot decode {what}: {source}")]
    Decode {
        /// The type that was expected.
        what: &'static str,
        /// The decoder's error.
        #[source]
        source: rmp_serde::decode::Error,
    },
    /// A schema version this build does not speak.
    #[error("schema version {found} is not supported (this node speaks {SCHEMA_VERSION})")]
    Version {
        /// The version found in the envelope.
        found: u16,
    },
    /// Serialization failed (a bug: every wire type serializes).
    #[error("cannot encode: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

impl From<&CodecError> for WireError {
    fn from(err: &CodecError) -> Self {
        let kind = match err {
            CodecError::TooLarge { .. } => ErrorKind::PayloadTooLarge,
            CodecError::Decode { .. } => ErrorKind::Decode,
            CodecError::Version { .. } => ErrorKind::UnsupportedVersion,
            CodecError::Encode(_) => ErrorKind::Internal,
        };
        WireError::new(kind, err.to_string())
    }
}

impl From<CodecError> for WireError {
    fn from(err: CodecError) -> Self {
        WireError::from(&err)
    }
}

/// Encodes an envelope as MessagePack with field names.
pub fn encode<T: Serialize>(envelope: &Envelope<T>) -> Result<Vec<u8>, CodecError> {
    // Room for a typical message (an envelope and a chunk of text is about 150 bytes), so
    // encoding one does not grow the buffer step by step from nothing.
    let mut out = Vec::with_capacity(256);
    rmp_serde::encode::write_named(&mut out, envelope)?;
    Ok(out)
}

/// Decodes an envelope, refusing payloads over `max_payload` bytes and unknown versions.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], max_payload: usize) -> Result<Envelope<T>, CodecError> {
    if bytes.len() > max_payload {
        return Err(CodecError::TooLarge { size: bytes.len(), limit: max_payload });
    }
    // One pass in the usual case; the version is read on its own only when the whole does
    // not decode, so a newer sender gets a version error rather than a confusing field
    // error.
    match from_slice_bounded::<Envelope<T>>(bytes) {
        Ok(envelope) if envelope.v == SCHEMA_VERSION => Ok(envelope),
        Ok(envelope) => Err(CodecError::Version { found: envelope.v }),
        Err(source) => {
            #[derive(serde::Deserialize)]
            struct VersionOnly {
                v: u16,
            }
            let version: VersionOnly =
                from_slice_bounded(bytes).map_err(|source| CodecError::Decode { what: "envelope", source })?;
            if version.v != SCHEMA_VERSION {
                return Err(CodecError::Version { found: version.v });
            }
            let what = std::any::type_name::<T>().rsplit("::").next().unwrap_or("message");
            Err(CodecError::Decode { what, source })
        }
    }
}

/// Decodes a task event, the message a relay decodes per token. A `chunk` is read as
/// the plain struct it is (its `type` one field among the others), which costs a fraction
/// of serde's generic path for an internally tagged enum (that buffers every field first);
/// any other event, or a chunk that does not read that way, goes the generic path.
pub fn decode_event(bytes: &[u8], max_payload: usize) -> Result<crate::TaskEvent, CodecError> {
    if bytes.len() > max_payload {
        return Err(CodecError::TooLarge { size: bytes.len(), limit: max_payload });
    }
    // TokenChunk's fields, spelled out (`flatten` would buffer like the tagged enum); of
    // the envelope only the version (the id, time and source are skipped, not copied).
    #[derive(serde::Deserialize)]
    struct Chunk<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        task_id: crate::TaskId,
        attempt: u32,
        seq: u64,
        text: String,
        #[serde(default)]
        logprobs: Vec<crate::TokenLogprob>,
        #[serde(default)]
        tool_calls: Vec<crate::ToolCall>,
    }
    #[derive(serde::Deserialize)]
    struct ChunkEnvelope<'a> {
        v: u16,
        #[serde(borrow)]
        body: Chunk<'a>,
    }
    if let Ok(ChunkEnvelope { v: SCHEMA_VERSION, body }) = from_slice_bounded::<ChunkEnvelope>(bytes) {
        if body.kind == "chunk" {
            let Chunk { task_id, attempt, seq, text, logprobs, tool_calls, .. } = body;
            return Ok(crate::TaskEvent::Chunk(crate::TokenChunk {
                task_id,
                attempt,
                seq,
                text,
                logprobs,
                tool_calls,
            }));
        }
    }
    decode(bytes, max_payload).map(|e| e.body)
}

/// Deepest nesting accepted. BitingLip's messages nest a few levels; a hostile payload of
/// nested arrays must fail long before it can exhaust a thread's stack.
const MAX_DEPTH: usize = 32;

fn from_slice_bounded<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, rmp_serde::decode::Error> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MAX_DEPTH);
    T::deserialize(&mut de)
}

/// Decodes an envelope and returns only its body.
pub fn decode_body<T: DeserializeOwned>(bytes: &[u8], max_payload: usize) -> Result<T, CodecError> {
    decode(bytes, max_payload).map(|e| e.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_decodes_the_same_by_the_short_path_and_other_events_by_the_long_one() {
        use crate::{TaskEvent, TaskFailed, TaskId, TokenChunk, TokenLogprob, ToolCall};
        let id = TaskId::parse("t1").unwrap();
        let chunk = TaskEvent::Chunk(TokenChunk {
            task_id: id.clone(),
            attempt: 2,
            seq: 7,
            text: "héllo".into(),
            logprobs: vec![TokenLogprob { token: "h".into(), logprob: -0.5, bytes: None, top: vec![] }],
            tool_calls: vec![ToolCall { id: "c".into(), name: "f".into(), arguments: "{}".into() }],
        });
        let failed =
            TaskEvent::Failed(TaskFailed { task_id: id, attempt: 1, error: WireError::new(ErrorKind::Engine, "x") });
        for event in [chunk, failed] {
            let bytes = encode(&Envelope::new("id", 1, "n", event.clone())).unwrap();
            assert_eq!(decode_event(&bytes, DEFAULT_MAX_PAYLOAD).unwrap(), event);
        }
        let newer = encode(&Envelope { v: 99, id: "i".into(), time_ms: 1, source: "n".into(), body: 1u8 }).unwrap();
        assert!(matches!(decode_event(&newer, DEFAULT_MAX_PAYLOAD), Err(CodecError::Version { found: 99 })));
    }

    #[test]
    fn refuses_garbage_and_truncation_with_a_decode_error() {
        let env = Envelope::new("id", 1, "n", "hello".to_string());
        let bytes = encode(&env).unwrap();
        for cut in 0..bytes.len() {
            let err = decode::<String>(&bytes[..cut], DEFAULT_MAX_PAYLOAD).unwrap_err();
            assert!(matches!(err, CodecError::Decode { .. }), "{err}");
        }
        assert!(decode::<String>(&[0xc1, 0xff, 0x00], DEFAULT_MAX_PAYLOAD).is_err());
    }

    #[test]
    fn refuses_oversized_payloads_before_parsing() {
        let err = decode::<String>(&[0u8; 100], 10).unwrap_err();
        assert!(matches!(err, CodecError::TooLarge { size: 100, limit: 10 }));
    }

    #[test]
    fn refuses_other_versions() {
        let mut env = Envelope::new("id", 1, "n", 5u32);
        env.v = 99;
        let err = decode::<u32>(&encode(&env).unwrap(), DEFAULT_MAX_PAYLOAD).unwrap_err();
        assert!(matches!(err, CodecError::Version { found: 99 }));
        assert_eq!(WireError::from(err).kind, ErrorKind::UnsupportedVersion);
    }

    /// Hostile input of every kind decodes to an error, never a panic or a huge allocation.
    #[test]
    fn hostile_input_is_an_error_not_a_crash() {
        use crate::{SubmitRequest, TaskEvent};
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        // Declared lengths of gigabytes: str32, bin32, array32, map32.
        for marker in [0xdbu8, 0xc6, 0xdd, 0xdf] {
            inputs.push(vec![marker, 0xff, 0xff, 0xff, 0xf0, b'a']);
            let mut env = vec![0x85, 0xa1, b'v', 0x01, 0xa4, b'b', b'o', b'd', b'y'];
            env.extend([marker, 0xff, 0xff, 0xff, 0xf0]);
            inputs.push(env);
        }
        // Deep nesting: a million nested one-element arrays, and maps.
        inputs.push(vec![0x91; 1_000_000]);
        let mut deep_map = Vec::new();
        for _ in 0..100_000 {
            deep_map.extend([0x81, 0xa1, b'k']);
        }
        inputs.push(deep_map);
        // The wrong schema: a valid envelope holding another message.
        inputs.push(encode(&Envelope::new("x", 1, "n", vec![1u8, 2, 3])).unwrap());
        // Random bytes from a fixed seed.
        let mut x: u64 = 0x9E3779B97F4A7C15;
        for len in 0..2000usize {
            let bytes: Vec<u8> = (0..len % 97)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            inputs.push(bytes);
        }
        for input in &inputs {
            assert!(decode::<SubmitRequest>(input, DEFAULT_MAX_PAYLOAD).is_err());
            let _ = decode::<TaskEvent>(input, usize::MAX);
        }
    }
}

/// Bytes as MessagePack `bin` (`#[serde(with = "bin")]`); an array of integers is read
/// too.
pub mod bin {
    use serde::{de, Deserializer, Serializer};

    /// Writes `bytes` as `bin`.
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    struct Visitor;

    impl<'de> de::Visitor<'de> for Visitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("bytes")
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }

    /// Reads `bin` (or an array of integers).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(Visitor)
    }
}

//! A batch's input: the `multipart/form-data` upload it arrives in, its request lines
//! checked and parsed, and the pages of lines a driving gateway reads one at a time.

use bitinglip_bus_schema::{BatchEndpoint, ChatParams, ErrorKind, WireError};
use serde_json::Value;

use crate::{
    gateway::{
        error::ApiError,
        openai::{
            chat::{Chat, Text},
            embeddings::Embeddings,
        },
    },
    NodeContext,
};

/// Why an upload or an input file cannot be used, for a person (naming the line at fault).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BadInput(String);

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for BadInput {
    fn from(s: &str) -> Self {
        BadInput(s.to_string())
    }
}

impl From<String> for BadInput {
    fn from(s: String) -> Self {
        BadInput(s)
    }
}

/// One request of a batch.
#[derive(Debug, Clone)]
pub(crate) struct Line {
    /// The caller's id of the line.
    pub(crate) custom_id: String,
    /// The task it runs.
    pub(crate) chat: ChatParams,
    /// Embeddings: answer in base64.
    pub(crate) base64: bool,
}

/// The task parameters of one line's `body` for `endpoint` (read as that route reads its
/// body), and whether its answer is in base64 (embeddings).
pub(crate) fn params_of(endpoint: BatchEndpoint, body: &Value) -> Result<(ChatParams, bool), ApiError> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    match endpoint {
        BatchEndpoint::ChatCompletions => Ok((Chat::parse(&bytes)?.chat, false)),
        BatchEndpoint::Completions => Ok((Text::parse(&bytes)?.chat, false)),
        BatchEndpoint::Embeddings => Embeddings::parse(&bytes).map(|a| (a.chat, a.shape.base64())),
    }
}

/// The most lines of one batch.
pub(crate) const LINES_MAX: usize = 50_000;

/// One part of a `multipart/form-data` body.
#[derive(Debug, PartialEq)]
pub(super) struct Part<'a> {
    pub(super) name: String,
    pub(super) filename: Option<String>,
    pub(super) data: &'a [u8],
}

/// The parts of a `multipart/form-data` body (RFC 7578).
pub(super) fn multipart<'a>(content_type: &str, body: &'a [u8]) -> Result<Vec<Part<'a>>, BadInput> {
    let boundary = content_type
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("boundary="))
        .map(|b| b.trim_matches('"'))
        .filter(|b| !b.is_empty())
        .ok_or("the body must be multipart/form-data with a boundary")?;
    let delimiter = format!("--{boundary}");
    let finder = memchr::memmem::Finder::new(delimiter.as_bytes());
    let start = finder.find(body).ok_or("no part in the multipart body")?;
    let mut rest = &body[start + delimiter.len()..];
    let mut parts = Vec::new();
    loop {
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        rest = rest.strip_prefix(b"\r\n").ok_or("a multipart delimiter must end its line")?;
        let head_end = memchr::memmem::find(rest, b"\r\n\r\n").ok_or("a multipart part has no end of headers")?;
        let head = std::str::from_utf8(&rest[..head_end]).map_err(|_| "multipart headers are not UTF-8")?;
        let after = &rest[head_end + 4..];
        let end = memchr::memmem::find(after, format!("\r\n{delimiter}").as_bytes())
            .ok_or("a multipart part has no closing delimiter")?;
        let mut name = None;
        let mut filename = None;
        for line in head.split("\r\n") {
            let Some((field, value)) = line.split_once(':') else { continue };
            if field.trim().eq_ignore_ascii_case("content-disposition") {
                for param in value.split(';').map(str::trim) {
                    if let Some(v) = param.strip_prefix("name=") {
                        name = Some(v.trim_matches('"').to_string());
                    } else if let Some(v) = param.strip_prefix("filename=") {
                        filename = Some(v.trim_matches('"').to_string());
                    }
                }
            }
        }
        let name = name.ok_or("a multipart part has no name")?;
        parts.push(Part { name, filename, data: &after[..end] });
        rest = &after[end + 2 + delimiter.len()..];
    }
}

/// Request lines a page of an input file holds (see `store::files`): a driving gateway
/// holds a page or two of a batch at once.
pub(crate) const PAGE_LINES: u32 = 256;

/// An input file's request lines (those that are not blank), in pages of [`PAGE_LINES`]
/// (pure).
pub(crate) fn pages_of(bytes: &[u8]) -> Vec<Vec<u8>> {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines.chunks(PAGE_LINES as usize).map(|page| page.join("\n").into_bytes()).collect()
}

/// Page `k` of file `file_id`'s request lines; `None` when the file is gone. A file from
/// before pages is paged first (once, by whichever gateway comes first).
pub(crate) async fn page_lines(
    ctx: &NodeContext,
    endpoint: BatchEndpoint,
    file_id: &str,
    k: u32,
) -> Result<Option<Vec<Line>>, WireError> {
    let files = ctx.store.files();
    if files.pages(file_id).await?.is_none() {
        let Some(bytes) = files.read(file_id).await? else { return Ok(None) };
        files.put_pages(file_id, &pages_of(&bytes)).await?;
    }
    let Some(page) = files.page(file_id, k).await? else { return Ok(None) };
    parse_lines(endpoint, &page).map(Some).map_err(|e| WireError::new(ErrorKind::InvalidRequest, e.to_string()))
}

/// The lines of a batch's input file, each checked as its endpoint's request; an error
/// names the line (from 1) and what is wrong.
pub(crate) fn parse_lines(endpoint: BatchEndpoint, bytes: &[u8]) -> Result<Vec<Line>, BadInput> {
    let text = std::str::from_utf8(bytes).map_err(|_| "the input file is not UTF-8")?;
    let mut lines = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(raw).map_err(|e| format!("line {n} is not JSON: {e}"))?;
        let custom_id = v
            .get("custom_id")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| format!("line {n} has no `custom_id`"))?
            .to_string();
        if !seen.insert(custom_id.clone()) {
            return Err(format!("line {n}: `custom_id` {custom_id:?} is not unique").into());
        }
        if v.get("method").and_then(Value::as_str) != Some("POST") {
            return Err(format!("line {n}: `method` must be POST").into());
        }
        if v.get("url").and_then(Value::as_str) != Some(endpoint.as_str()) {
            return Err(format!("line {n}: `url` must be the batch's endpoint {endpoint}").into());
        }
        let body = v.get("body").filter(|b| b.is_object()).ok_or_else(|| format!("line {n} has no `body` object"))?;
        let (chat, base64) = params_of(endpoint, body).map_err(|e| format!("line {n}: {}", e.body().error.message))?;
        lines.push(Line { custom_id, chat, base64 });
        if lines.len() > LINES_MAX {
            return Err(format!("the input file has over {LINES_MAX} lines").into());
        }
    }
    if lines.is_empty() {
        return Err("the input file has no request".into());
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lines_body_becomes_its_endpoints_task() {
        let (chat, base64) = params_of(
            BatchEndpoint::Embeddings,
            &serde_json::json!({"model": "e", "input": ["a"], "encoding_format": "base64"}),
        )
        .unwrap();
        assert_eq!((chat.input.len(), base64), (1, true));
        let (chat, _) =
            params_of(BatchEndpoint::Completions, &serde_json::json!({"model": "m", "prompt": "p"})).unwrap();
        assert_eq!(chat.prompt.as_deref(), Some("p"));
    }

    #[test]
    fn an_input_file_is_paged_by_its_request_lines() {
        let lines: Vec<String> = (0..PAGE_LINES * 2 + 3).map(|i| format!("{{\"n\":{i}}}")).collect();
        let file = format!("\n{}\n\n", lines.join("\n\n"));
        let pages = pages_of(file.as_bytes());
        assert_eq!(pages.len(), 3);
        let back: Vec<String> = pages
            .iter()
            .flat_map(|p| String::from_utf8_lossy(p).lines().map(str::to_string).collect::<Vec<_>>())
            .collect();
        assert_eq!(back, lines, "every request line once, in order, blank lines left out");
        assert_eq!(String::from_utf8_lossy(&pages[2]).lines().count(), 3);
    }

    #[test]
    fn multipart_bodies_are_read_part_by_part() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\nContent-Type: application/octet-stream\r\n\r\n{\"a\":1}\n{\"b\":2}\n\r\n--XyZ--\r\n";
        let parts = multipart("multipart/form-data; boundary=XyZ", body).unwrap();
        assert_eq!(parts[0], Part { name: "purpose".into(), filename: None, data: b"batch" });
        assert_eq!(parts[1].filename.as_deref(), Some("in.jsonl"));
        assert_eq!(parts[1].data, b"{\"a\":1}\n{\"b\":2}\n");
        assert!(multipart("application/json", body).is_err());
        assert!(multipart("multipart/form-data; boundary=XyZ", b"--XyZ\r\nno end").is_err());
    }

    #[test]
    fn input_lines_are_checked_and_named() {
        let ok = r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"hi"}]}}"#;
        let lines = parse_lines(BatchEndpoint::ChatCompletions, format!("{ok}\n\n").as_bytes()).unwrap();
        assert_eq!((lines.len(), lines[0].custom_id.as_str()), (1, "a"));
        for (bad, says) in [
            (format!("{ok}\n{ok}"), "not unique"),
            ("{".to_string(), "line 1 is not JSON"),
            (ok.replace("POST", "GET"), "`method`"),
            (ok.replace("/v1/chat/completions", "/v1/embeddings"), "`url`"),
            (
                ok.replace(r#""messages":[{"role":"user","content":"hi"}]"#, r#""messages":5"#),
                "line 1: invalid field `messages`",
            ),
            (String::new(), "no request"),
        ] {
            let err = parse_lines(BatchEndpoint::ChatCompletions, bad.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(says), "{says}: {err}");
        }
    }
}

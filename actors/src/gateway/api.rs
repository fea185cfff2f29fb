//! The OpenAPI document at `/openapi.json`, made from the handlers' `#[utoipa::path]`
//! attributes and the types they read and answer with (see `routes.rs`), then completed
//! from the same rules that enforce them: the security each path needs (`auth::needs`),
//! the routes that spend a key's limits (`limits::counted`), and OpenAI's error shape for
//! every error.

use axum::{
    http::{header, Method},
    response::IntoResponse,
    Extension,
};
use bytes::Bytes;
use utoipa::{
    openapi::{
        path::Operation,
        security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme},
        ContentBuilder, Header, ObjectBuilder, OpenApi as Document, Ref, RefOr, Response, Schema, Type,
    },
    OpenApi, ToSchema,
};

use super::{error::ErrorBody, openai::ChatCompletionChunk};

/// What the derive adds to the routes' descriptions: the title, the groups, the schemas
/// no route names directly (the stream chunk, the error), and the two routes whose path
/// holds a model id with slashes (routed apart: see `routes.rs`).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "BitingLip",
        description = "OpenAI-compatible inference, a durable task API and cluster administration. \
            Every route but `/health` and `/ready` takes an API key: `Authorization: Bearer <key>`."
    ),
    paths(super::admin::remove, super::admin::delete_deployment),
    components(schemas(ErrorBody, ChatCompletionChunk)),
    tags(
        (name = "openai", description = "OpenAI-compatible inference"),
        (name = "tasks", description = "The durable task API: submit now, read later, from any gateway"),
        (name = "admin", description = "Models, deployments, workers and the cluster (admin keys)"),
        (name = "keys", description = "API keys and usage (admin keys)"),
        (name = "health", description = "Probes (no key) and metrics (admin keys)"),
    )
)]
pub(super) struct Base;

/// The document, serialized once when the router is built.
#[derive(Clone)]
pub(super) struct DocumentJson(pub(super) Bytes);

impl DocumentJson {
    pub(super) fn new(doc: &Document) -> Self {
        Self(Bytes::from(serde_json::to_vec(doc).unwrap_or_default()))
    }
}

/// This API, described (OpenAPI 3.1).
#[utoipa::path(get, path = "/openapi.json", tag = "health",
    responses((status = 200, description = "the OpenAPI document", body = Object)))]
pub(super) async fn openapi(Extension(doc): Extension<DocumentJson>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], doc.0)
}

fn error_response(description: &str) -> Response {
    let body = ContentBuilder::new().schema(Some(Ref::from_schema_name(ErrorBody::name()))).build();
    let mut response = Response::new(description);
    response.content.insert("application/json".into(), body);
    response
}

fn with_header(mut response: Response, name: String, description: &str, kind: Type) -> Response {
    let schema: RefOr<Schema> = ObjectBuilder::new().schema_type(kind).into();
    let mut header = Header::new(schema);
    header.description = Some(description.to_string());
    response.headers.insert(name, header);
    response
}

/// The headers of a limited key's answers, OpenAI's names.
fn rate_headers(mut response: Response) -> Response {
    for what in ["requests", "tokens"] {
        let limit = format!("the key's limit of {what} per minute");
        response = with_header(response, format!("x-ratelimit-limit-{what}"), &limit, Type::Integer);
        let left = format!("{what} left this minute");
        response = with_header(response, format!("x-ratelimit-remaining-{what}"), &left, Type::Integer);
        let reset = "until the window resets, such as `12s`";
        response = with_header(response, format!("x-ratelimit-reset-{what}"), reset, Type::String);
    }
    response
}

/// Completes what the attributes cannot say on their own: the bearer scheme; per path,
/// no security for the probes and 401/403 for the rest; 429 and the rate headers on the
/// routes that count against a key's limits; and OpenAI's error shape for every other
/// error status.
pub(super) fn finish(mut doc: Document) -> Document {
    let components = doc.components.get_or_insert_with(Default::default);
    let scheme = Http::builder()
        .scheme(HttpAuthScheme::Bearer)
        .description(Some(
            "an API key: `bitinglip keys create`, or the admin key `bitinglip up` writes to its data folder",
        ))
        .build();
    components.security_schemes.insert("bearer".into(), SecurityScheme::Http(scheme));
    doc.security = Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new())]);
    for (path, item) in doc.paths.paths.iter_mut() {
        let operations = [
            (Method::GET, &mut item.get),
            (Method::POST, &mut item.post),
            (Method::PUT, &mut item.put),
            (Method::DELETE, &mut item.delete),
            (Method::PATCH, &mut item.patch),
        ];
        for (method, operation) in operations {
            if let Some(operation) = operation {
                complete(path, &method, operation);
            }
        }
    }
    doc
}

fn complete(path: &str, method: &Method, operation: &mut Operation) {
    let responses = &mut operation.responses.responses;
    let Some(scope) = super::access::auth::needs(path) else {
        operation.security = Some(vec![]);
        return;
    };
    let unauthorized = error_response("no key, or a key unknown, revoked or expired (`invalid_api_key`)");
    let unauthorized = with_header(unauthorized, "WWW-Authenticate".into(), "`Bearer`", Type::String);
    responses.insert("401".into(), unauthorized.into());
    let forbidden = format!("the key's scope is not `{}`, or its model list does not hold the model", scope.as_str());
    responses.insert("403".into(), error_response(&forbidden).into());
    if super::access::limits::counted(method, path) {
        let over = rate_headers(error_response("over one of the key's limits; `Retry-After` says when to retry"));
        let over = with_header(over, "Retry-After".into(), "seconds", Type::Integer);
        responses.insert("429".into(), over.into());
        for (status, response) in responses.iter_mut() {
            if status.starts_with('2') {
                if let RefOr::T(response) = response {
                    *response = rate_headers(std::mem::take(response));
                }
            }
        }
    }
    responses.entry("default".into()).or_insert_with(|| {
        error_response(
            "an error in OpenAI's shape: 400 invalid request, 404 unknown, 409 conflict, 413 too large, \
             429 overloaded, 503 unavailable or loading (with `Retry-After`), 504 timeout",
        )
        .into()
    });
}

#[cfg(test)]
mod tests {
    use crate::gateway::routes::api_routes;

    fn doc() -> serde_json::Value {
        serde_json::to_value(api_routes().1).unwrap()
    }

    #[test]
    fn every_route_is_described_with_its_security() {
        let doc = doc();
        let paths = doc["paths"].as_object().unwrap();
        for path in [
            "/v1/chat/completions",
            "/v1/models",
            "/v1/tasks",
            "/v1/completions",
            "/v1/tasks/{id}",
            "/v1/tasks/{id}/events",
            "/api/v1/models/{model}",
            "/api/v1/deployments/{model}",
            "/api/v1/keys",
            "/api/v1/usage",
            "/health",
            "/ready",
            "/metrics",
            "/openapi.json",
        ] {
            assert!(paths.contains_key(path), "{path} missing");
        }
        assert_eq!(doc["paths"]["/health"]["get"]["security"], serde_json::json!([]));
        assert!(doc["paths"]["/health"]["get"]["responses"].get("401").is_none());
        assert!(doc["paths"]["/api/v1/keys"]["post"]["responses"].get("401").is_some());
        assert!(doc["paths"]["/v1/chat/completions"]["post"]["responses"].get("429").is_some());
        assert!(doc["paths"]["/v1/models"]["get"]["responses"].get("429").is_none());
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    }

    #[test]
    fn request_and_answer_schemas_come_from_the_types() {
        let doc = doc();
        let schemas = &doc["components"]["schemas"];
        // The shared sampling fields are flattened in: the request is all of them.
        let chat = &schemas["ChatCompletionRequest"]["allOf"];
        let parts: Vec<String> = chat.as_array().unwrap().iter().map(|p| p.to_string()).collect();
        let own = chat.as_array().unwrap().iter().find(|p| p["required"].is_array()).expect("own fields");
        assert_eq!(own["required"], serde_json::json!(["model", "messages"]));
        assert!(own["properties"]["tools"].is_object() && own["properties"]["response_format"].is_object());
        assert!(parts.iter().any(|p| p.contains("#/components/schemas/Sampling")), "{parts:?}");
        assert!(schemas["Sampling"]["properties"]["stream_options"].is_object());
        assert!(schemas["Unsupported"]["properties"]["audio"].is_object());
        let deployment = &schemas["SetDeployment"]["properties"]["spec"];
        assert!(deployment.is_object(), "{deployment}");
        assert_eq!(schemas["EngineKind"]["enum"], serde_json::json!(["mistralrs", "echo"]));
        assert_eq!(schemas["CreateKey"]["additionalProperties"], false);
        for schema in [
            "ChatCompletion",
            "ChatCompletionChunk",
            "TextCompletion",
            "TaskView",
            "KeyView",
            "ErrorBody",
            "ClusterView",
        ] {
            assert!(schemas[schema]["properties"].is_object(), "{schema}");
        }
    }
}

//! API keys on real gateways: every route but the probes takes a key; scopes and model
//! lists are enforced; keys made with the CLI and over HTTP work at once and a revoked
//! one is refused on another gateway within seconds; tasks are private to their key and
//! idempotency keys are scoped to it and checked against the request.

use std::time::Duration;

use bitinglip_tests::{
    assert_eventually, cli_key, echo_node, http, http_with, run_cli, test_config, two_gateways, NodeProcess, TestNats,
};
use serde_json::{json, Value};

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "one two three"}], "max_tokens": 3})
}

async fn status_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_guard_every_route_scope_models_and_tasks_and_revocation_reaches_every_gateway() {
    let nats = TestNats::start().await;
    let url = nats.url();
    let (mut front, mut second, a, b) = two_gateways(&url, &["echo-a", "echo-b"]).await;

    // The probes are open; everything else needs a key, unknown routes included.
    let anonymous = reqwest::Client::new();
    assert_eq!(anonymous.get(format!("{a}/health")).send().await.unwrap().status(), 200);
    assert_eq!(anonymous.get(format!("{a}/ready")).send().await.unwrap().status(), 200);
    for (method, path) in [
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/tasks"),
        ("GET", "/api/v1/deployments"),
        ("GET", "/api/v1/keys"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/no/such/route"),
    ] {
        let req = anonymous.request(method.parse().unwrap(), format!("{a}{path}")).json(&chat("echo-a"));
        let resp = req.send().await.unwrap();
        assert!(resp.headers().contains_key("www-authenticate"), "{path}");
        let (status, body) = status_of(resp).await;
        assert_eq!((status, body["error"]["code"].as_str()), (401, Some("invalid_api_key")), "{method} {path}: {body}");
    }
    for bad in ["sk-not-ours", &format!("blk-{}-{}", "0".repeat(16), "0".repeat(48))] {
        let (status, _) = status_of(http_with(bad).get(format!("{a}/v1/models")).send().await.unwrap()).await;
        assert_eq!(status, 401, "{bad}");
    }

    // An inference key for one model, made with the CLI: its model only, no admin route.
    let (_, narrow) = cli_key(&url, &["--name", "narrow", "--models", "echo-a"]);
    let narrow_http = http_with(&narrow);
    let (status, models) = status_of(narrow_http.get(format!("{a}/v1/models")).send().await.unwrap()).await;
    assert_eq!(status, 200, "{models}");
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, ["echo-a"]);
    let (status, body) =
        status_of(narrow_http.post(format!("{a}/v1/chat/completions")).json(&chat("echo-a")).send().await.unwrap())
            .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        status_of(narrow_http.post(format!("{a}/v1/chat/completions")).json(&chat("echo-b")).send().await.unwrap())
            .await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("model_not_allowed")), "{body}");
    for path in ["/api/v1/deployments", "/api/v1/keys", "/metrics"] {
        let (status, body) = status_of(narrow_http.get(format!("{a}{path}")).send().await.unwrap()).await;
        assert_eq!((status, body["error"]["code"].as_str()), (403, Some("insufficient_scope")), "{path}: {body}");
    }

    // Two keys over HTTP with the admin key; a bad request names its field.
    let create = |name: &str| {
        let a = a.clone();
        let body = json!({"name": name});
        async move { status_of(http().post(format!("{a}/api/v1/keys")).json(&body).send().await.unwrap()).await }
    };
    let (status, one) = create("one").await;
    assert_eq!(status, 200, "{one}");
    let (_, two) = create("two").await;
    let (one_key, two_key, two_id) =
        (one["key"].as_str().unwrap(), two["key"].as_str().unwrap(), two["id"].as_str().unwrap().to_string());
    let (status, body) = status_of(
        http().post(format!("{a}/api/v1/keys")).json(&json!({"name": "x", "scope": "root"})).send().await.unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("scope"), "{body}");
    // A key in a tenant, with the tenant's weight; alone, a key is its own tenant of weight 1.
    let (status, teamed) = status_of(
        http()
            .post(format!("{a}/api/v1/keys"))
            .json(&json!({"name": "t", "tenant": "team-a", "weight": 3}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, &teamed["tenant"], &teamed["weight"]), (200, &json!("team-a"), &json!(3)), "{teamed}");
    assert_eq!((&one["tenant"], &one["weight"]), (&one["id"], &json!(1)), "{one}");
    for (bad, field) in [(json!({"weight": 0}), "weight"), (json!({"tenant": "client-x"}), "tenant")] {
        let mut body = json!({"name": "x"});
        body.as_object_mut().unwrap().extend(bad.as_object().unwrap().clone());
        let (status, answer) =
            status_of(http().post(format!("{a}/api/v1/keys")).json(&body).send().await.unwrap()).await;
        assert_eq!(status, 400, "{answer}");
        assert!(answer["error"]["message"].as_str().unwrap().contains(field), "{answer}");
    }

    // Tasks are private to their key: another key sees a 404, an admin key sees all.
    let (one_http, two_http) = (http_with(one_key), http_with(two_key));
    let (status, task) =
        status_of(one_http.post(format!("{a}/v1/tasks")).json(&chat("echo-a")).send().await.unwrap()).await;
    assert_eq!(status, 202, "{task}");
    let id = task["id"].as_str().unwrap().to_string();
    assert_eq!(one_http.get(format!("{a}/v1/tasks/{id}")).send().await.unwrap().status(), 200);
    assert_eq!(http().get(format!("{a}/v1/tasks/{id}")).send().await.unwrap().status(), 200);
    assert_eq!(two_http.get(format!("{a}/v1/tasks/{id}")).send().await.unwrap().status(), 404);
    assert_eq!(two_http.get(format!("{b}/v1/tasks/{id}/events")).send().await.unwrap().status(), 404);
    assert_eq!(two_http.delete(format!("{a}/v1/tasks/{id}")).send().await.unwrap().status(), 404);
    let listed = |client: reqwest::Client, base: String| async move {
        let (_, list) = status_of(client.get(format!("{base}/v1/tasks")).send().await.unwrap()).await;
        list["data"].as_array().unwrap().iter().filter_map(|t| t["id"].as_str().map(str::to_string)).collect::<Vec<_>>()
    };
    assert!(listed(one_http.clone(), a.clone()).await.contains(&id));
    assert!(!listed(two_http.clone(), a.clone()).await.contains(&id));
    assert!(listed(http(), a.clone()).await.contains(&id));

    // Idempotency keys are scoped to the API key and checked against the request.
    let idem = |client: &reqwest::Client, body: Value| {
        client.post(format!("{a}/v1/tasks")).header("Idempotency-Key", "order-42").json(&body).send()
    };
    let (_, first) = status_of(idem(&one_http, chat("echo-a")).await.unwrap()).await;
    let (_, again) = status_of(idem(&one_http, chat("echo-a")).await.unwrap()).await;
    let (_, other_key) = status_of(idem(&two_http, chat("echo-a")).await.unwrap()).await;
    assert_eq!(first["id"], again["id"], "a retry is the same task");
    assert_ne!(first["id"], other_key["id"], "another API key's idempotency key is another task");
    let (status, body) = status_of(idem(&one_http, chat("echo-b")).await.unwrap()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("conflict")), "{body}");

    // An id that cannot be a key's is a 404, like an unknown one.
    for bad in ["a%20b", ".x", "a*b", "0123456789abcdef"] {
        let resp = http().delete(format!("{a}/api/v1/keys/{bad}")).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{bad}");
    }

    // Revoked on one gateway, refused on the other within seconds.
    assert_eq!(two_http.get(format!("{b}/v1/models")).send().await.unwrap().status(), 200);
    let (status, body) = status_of(http().delete(format!("{a}/api/v1/keys/{two_id}")).send().await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eventually!(
        Duration::from_secs(2),
        async { two_http.get(format!("{b}/v1/models")).send().await.unwrap().status() == 401 },
        "the revoked key still works on the second gateway"
    );
    let (code, out, err) = run_cli(&["keys", "ls", "--nats", &url, "--json"]);
    assert_eq!(code, 0, "{err}");
    let keys: Value = serde_json::from_str(&out).unwrap();
    let listed_two = keys.as_array().unwrap().iter().find(|k| k["id"] == two_id.as_str()).expect("the key is listed");
    assert!(listed_two["revoked_ms"].as_u64().is_some(), "{listed_two}");
    assert!(!out.contains(two_key) && !out.contains("secret_sha256") && !out.contains("\"key\""), "{out}");

    // An expired key stops working by itself.
    let (_, brief) = cli_key(&url, &["--name", "brief", "--expires", "2s"]);
    let brief_http = http_with(&brief);
    assert_eq!(brief_http.get(format!("{a}/v1/models")).send().await.unwrap().status(), 200);
    assert_eventually!(
        Duration::from_secs(10),
        async { brief_http.get(format!("{a}/v1/models")).send().await.unwrap().status() == 401 },
        "the expired key still works"
    );
    let _ = (&mut front, &mut second);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_key_request_and_an_unknown_scope_are_refused_by_the_cli() {
    let nats = TestNats::start().await;
    let mut node = NodeProcess::spawn(&test_config(&nats.url()), &["node"]);
    node.wait_for_http(Duration::from_secs(30)).await;
    let (code, _, err) = run_cli(&["keys", "create", "--nats", &nats.url(), "--name", "x", "--scope", "root"]);
    assert_ne!(code, 0);
    assert!(err.contains("scope"), "{err}");
    let url = nats.url();
    let teamed = ["keys", "create", "--nats", &url, "--name", "t", "--tenant", "team-b", "--weight", "2", "--json"];
    let (code, out, err) = run_cli(&teamed);
    assert_eq!(code, 0, "{err}");
    let view: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((&view["tenant"], &view["weight"]), (&serde_json::json!("team-b"), &serde_json::json!(2)), "{out}");
    let (code, _, err) = run_cli(&["keys", "create", "--nats", &url, "--name", "x", "--weight", "0"]);
    assert_ne!(code, 0);
    assert!(err.contains("weight"), "{err}");
    let (code, _, err) = run_cli(&["keys", "revoke", "--nats", &nats.url(), "nope"]);
    assert_ne!(code, 0);
    assert!(err.contains("no API key"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_task_list_is_paged_newest_first_without_repeats() {
    let nats = TestNats::start().await;
    let (_node, base) = echo_node(&nats.url(), 0.0, 4).await;
    let (_, key) = cli_key(&nats.url(), &["--name", "pager"]);
    let client = http_with(&key);
    let mut ids = Vec::new();
    for _ in 0..7 {
        let (status, task) =
            status_of(client.post(format!("{base}/v1/tasks")).json(&chat("echo")).send().await.unwrap()).await;
        assert_eq!(status, 202, "{task}");
        ids.push(task["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        bitinglip_tests::wait_task_status(&client, &base, id, "completed").await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<u64> = None;
    for page in 0..5 {
        let url = match cursor {
            Some(c) => format!("{base}/v1/tasks?limit=3&before={c}"),
            None => format!("{base}/v1/tasks?limit=3"),
        };
        let (status, list) = status_of(client.get(url).send().await.unwrap()).await;
        assert_eq!(status, 200, "{list}");
        let data = list["data"].as_array().unwrap();
        assert!(data.len() <= 3, "page {page}: {list}");
        seen.extend(data.iter().map(|t| t["id"].as_str().unwrap().to_string()));
        cursor = list["next"].as_u64();
        assert_eq!(list["has_more"], cursor.is_some());
        if cursor.is_none() {
            break;
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "no task twice: {seen:?}");
    let mut want = ids.clone();
    want.sort();
    assert_eq!(sorted, want, "every task of the key, and only those");
}

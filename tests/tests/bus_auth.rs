//! The bus trusts no one by default. A nats-server that authorizes the users
//! `bitinglip nats init` wrote, a node whose roles each connect as their own user and
//! serve a chat, and then, as the server sees them: what a worker's and a client's
//! credentials may not do is refused with the server's permissions error; a client
//! submits and follows its task; an anonymous connection is refused. Each worker node may
//! have an identity of its own, and one is revoked without touching the others. Each
//! client application may have one too, and owns its tasks: another identity can neither
//! read, list, cancel, replace nor charge them (checked with nats.py).

use std::time::Duration;

use bitinglip_bus_schema::{Envelope, Subjects, SubmitRequest};
use bitinglip_tests::{echo_config, http, run_cli, server_with_credentials, spawn_gateway};
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;

/// A connection as `role`, and the server's errors it receives.
async fn connect_as(
    url: &str,
    dir: &std::path::Path,
    role: &str,
) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let seed = std::fs::read_to_string(dir.join(format!("{role}.nk"))).unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_nkey(seed.trim().to_string())
        .custom_inbox_prefix(format!("_INBOX_{}", role.replace('-', "_")))
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(err) = event {
                    let _ = tx.send(err.to_string());
                }
            }
        })
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("{role} connects: {e}"));
    (client, rx)
}

/// Waits for the server's permissions error naming `subject`.
async fn refused(errors: &mut mpsc::UnboundedReceiver<String>, subject: &str) {
    let wait = async {
        while let Some(e) = errors.recv().await {
            if e.to_lowercase().contains("permissions violation") && e.contains(subject) {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .unwrap_or_else(|_| panic!("no permissions violation for {subject}"));
}

/// Credentials for a deployment: `bitinglip nats init --out <a new folder>` with `args`,
/// which succeeds; returns the folder and what it printed.
fn nats_init(args: &[&str]) -> (tempfile::TempDir, String) {
    let creds = tempfile::tempdir().unwrap();
    let mut all = vec!["nats", "init", "--out", creds.path().to_str().unwrap()];
    all.extend_from_slice(args);
    let (code, out, err) = run_cli(&all);
    assert_eq!(code, 0, "{out}{err}");
    (creds, out)
}

#[tokio::test(flavor = "multi_thread")]
async fn each_role_may_do_its_work_and_nothing_destructive() {
    // The operator's step: credentials for a deployment, then a server that includes them.
    let (creds, _) = nats_init(&[]);
    for role in ["gateway", "task-manager", "model-manager", "cluster-manager", "worker", "client", "admin", "events"] {
        let path = creds.path().join(format!("{role}.nk"));
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600, "{}", path.display());
    }
    let admin_seed = std::fs::read_to_string(creds.path().join("admin.nk")).unwrap();
    // A second init keeps every secret (the files are the state, not what it prints).
    let seeds = |dir: &std::path::Path| {
        ["gateway", "task-manager", "model-manager", "cluster-manager", "worker", "client", "admin"]
            .map(|role| std::fs::read_to_string(dir.join(format!("{role}.nk"))).unwrap())
    };
    let first = seeds(creds.path());
    let (code, _, err) = run_cli(&["nats", "init", "--out", creds.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(seeds(creds.path()), first);

    let (_data, server) = server_with_credentials(creds.path()).await;
    let url = server.url();

    // Anonymous is refused.
    let anonymous = tokio::time::timeout(Duration::from_secs(3), async_nats::connect(&url)).await;
    assert!(!matches!(anonymous, Ok(Ok(_))), "an anonymous client was let in");

    // A node with every role, each on its own user, provisions and serves.
    let mut config = echo_config(&url, 0.0, 4);
    config.nats.credentials_dir = Some(creds.path().to_path_buf());
    let (node, base) = spawn_gateway(&config).await;
    let answer = bitinglip_tests::chat_when_served(&base, "echo", "one two three").await;
    assert_eq!(answer["choices"][0]["message"]["content"], "one two three", "{answer}\n{}", node.log());
    let tasks: Value = http().get(format!("{base}/v1/tasks")).send().await.unwrap().json().await.unwrap();
    assert_eq!(tasks["data"][0]["status"], "completed", "{tasks}");

    let s = Subjects::default();
    // A worker's credentials: no deleting or purging streams, no deleting the queue's
    // consumers, no deployments or model removal, no forged advisories.
    let (worker, mut errors) = connect_as(&url, creds.path(), "worker").await;
    for subject in [
        format!("$JS.API.STREAM.DELETE.{}", s.tasks_stream()),
        format!("$JS.API.STREAM.PURGE.{}", s.tasks_stream()),
        format!("$JS.API.STREAM.CREATE.{}", s.events_stream()),
        format!("$JS.API.STREAM.CREATE.KV_{}", s.keys_bucket()),
        format!("$JS.API.CONSUMER.DELETE.{}.worker-echo-interactive", s.tasks_stream()),
        s.deployment_set(),
        s.model_delete(),
        format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.worker-echo-interactive", s.tasks_stream()),
        format!("$KV.{}.forged", s.keys_bucket()),
        // Nor make or change the queue's consumers, nor touch a counter (a negative
        // `Nats-Incr` would erase a key's usage).
        format!("$JS.API.CONSUMER.CREATE.{}", s.tasks_stream()),
        format!(
            "$JS.API.CONSUMER.CREATE.{}.worker-echo-interactive.{}",
            s.tasks_stream(),
            s.queue("echo", bitinglip_bus_schema::Priority::Interactive)
        ),
        s.day_tokens_counter("0123456789abcdef", "2026-12-07"),
        s.rate_counter("0123456789abcdef", 29_000_000, "tokens"),
        s.usage_counter("0123456789abcdef", "echo", "2026-12-07", "completion_tokens"),
    ] {
        worker.publish(subject.clone(), "{}".into()).await.unwrap();
        worker.flush().await.unwrap();
        refused(&mut errors, &subject).await;
    }
    // A worker's registration is checked as an id from HTTP is: a `..` segment is refused.
    let forged = bitinglip_bus_schema::RegisterModel {
        model: bitinglip_bus_schema::ModelRecord {
            id: "acme/../../../etc".into(),
            source: bitinglip_bus_schema::ModelSource::Hub { revision: "main".into() },
            context_length: None,
            revision_sha: None,
            files: vec![],
            estimated_memory: None,
            engine: Default::default(),
            shape: None,
            created_ms: 0,
            updated_ms: 0,
        },
        worker: "forger".into(),
    };
    let payload = bitinglip_bus_schema::encode(&Envelope::new("forged-1", 0, "bus-auth-test", forged)).unwrap();
    let reply = worker.request(s.model_register(), payload.into()).await.expect("a worker may register");
    let reply = String::from_utf8_lossy(&reply.payload).to_string();
    assert!(reply.contains("invalid_request") && reply.contains(".."), "{reply}");
    // The streams are all still there, with their tasks.
    let admin = async_nats::ConnectOptions::with_nkey(admin_seed.trim().to_string())
        .custom_inbox_prefix("_INBOX_admin")
        .connect(&url)
        .await
        .unwrap();
    let js = async_nats::jetstream::new(admin);
    for stream in [s.tasks_stream(), s.events_stream(), format!("KV_{}", s.tasks_bucket())] {
        assert!(js.get_stream(&stream).await.is_ok(), "{stream}");
    }

    // A client's credentials: submit and follow a task over NATS, nothing else.
    let (client, mut errors) = connect_as(&url, creds.path(), "client").await;
    let mut events = client.subscribe("bitinglip.v1.task.client-default.bus-auth-client-1.events").await.unwrap();
    client.flush().await.unwrap();
    let mut submit = SubmitRequest::new(bitinglip_bus_schema::ChatParams::user("echo", "four five"));
    submit.task_id = Some(bitinglip_bus_schema::TaskId::parse("bus-auth-client-1").unwrap());
    let payload = bitinglip_bus_schema::encode(&Envelope::new("bus-auth-1", 0, "bus-auth-test", submit)).unwrap();
    let reply =
        client.request(s.task_submit(Some("client-default")), payload.into()).await.expect("a client may submit");
    assert!(String::from_utf8_lossy(&reply.payload).contains("accepted"));
    let mut text = String::new();
    let done = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(msg) = events.next().await {
            let body = String::from_utf8_lossy(&msg.payload).to_string();
            if body.contains("completed") {
                return body;
            }
            text.push_str(&body);
        }
        String::new()
    })
    .await
    .expect("the client follows its task to the end");
    assert!(done.contains("four five"), "{done}");
    for subject in [s.model_delete(), format!("$JS.API.STREAM.DELETE.{}", s.tasks_stream()), s.deployment_set()] {
        client.publish(subject.clone(), "{}".into()).await.unwrap();
        client.flush().await.unwrap();
        refused(&mut errors, &subject).await;
    }
    // Another role's replies are out of reach.
    let sub = client.subscribe("_INBOX_gateway.>").await.unwrap();
    drop(sub);
    client.flush().await.unwrap();
    refused(&mut errors, "_INBOX_gateway.>").await;

    // The `events` user (the system account) reads client disconnects and nothing else:
    // it sees the client above leave, and may neither publish nor read the application's
    // subjects.
    let (events, mut errors) = connect_as(&url, creds.path(), "events").await;
    let mut disconnects = events.subscribe(s.client_disconnects()).await.unwrap();
    events.flush().await.unwrap();
    let named = async_nats::ConnectOptions::with_nkey(
        std::fs::read_to_string(creds.path().join("client.nk")).unwrap().trim().to_string(),
    )
    .name("bitinglip-test-leaver")
    .custom_inbox_prefix("_INBOX_client")
    .connect(&url)
    .await
    .unwrap();
    named.flush().await.unwrap();
    drop(named);
    let left = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(msg) = disconnects.next().await {
            if String::from_utf8_lossy(&msg.payload).contains("bitinglip-test-leaver") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(left, Ok(true), "the events user saw the client's connection close");
    let sub = events.subscribe(s.all_task_events()).await.unwrap();
    drop(sub);
    events.publish(s.task_submit(None), "{}".into()).await.unwrap();
    events.flush().await.unwrap();
    refused(&mut errors, &s.all_task_events()).await;
    refused(&mut errors, &s.task_submit(None)).await;

    // The same from another language's client (nats.py), as the server refuses it.
    let python = bitinglip_tests::workspace_root().join(".venv/bin/python");
    assert!(python.is_file(), "{} missing: run .ci/setup", python.display());
    let script = bitinglip_tests::workspace_root().join("tests/py/bus_permissions.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .args([url.as_str(), creds.path().to_str().unwrap(), &s.tasks_stream()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let results: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(results.len(), 13, "{stdout}");
    for r in &results {
        assert_eq!(r["refused"], true, "{r}");
    }
    // The node served on, and the tasks stream is still there.
    assert!(js.get_stream(s.tasks_stream()).await.is_ok());
}

/// A connection with the seed in `file` as a worker (the worker's inbox prefix).
async fn connect_worker_seed(url: &str, file: &std::path::Path) -> Result<async_nats::Client, String> {
    let seed = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    let connect = async_nats::ConnectOptions::with_nkey(seed.trim().to_string())
        .custom_inbox_prefix("_INBOX_worker")
        .max_reconnects(Some(0))
        .connect(url);
    match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_worker_node_has_an_identity_of_its_own_and_one_is_revoked_alone() {
    let (creds, _) = nats_init(&["--worker", "box-a", "--worker", "box-b"]);
    let dir = creds.path().to_str().unwrap();
    for name in ["box-a", "box-b"] {
        let path = creds.path().join(format!("worker-{name}.nk"));
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600, "{}", path.display());
    }
    let (_data, mut server) = server_with_credentials(creds.path()).await;
    let url = server.url();
    assert!(connect_worker_seed(&url, &creds.path().join("worker-box-b.nk")).await.is_ok());

    // A node with id box-a connects its worker as box-a and serves: the shared worker seed
    // is not even there.
    std::fs::remove_file(creds.path().join("worker.nk")).unwrap();
    let mut config = echo_config(&url, 0.0, 4);
    config.node_id = "box-a".into();
    config.nats.credentials_dir = Some(creds.path().to_path_buf());
    let (node, base) = spawn_gateway(&config).await;
    let answer = bitinglip_tests::chat_when_served(&base, "echo", "one two").await;
    assert_eq!(answer["choices"][0]["message"]["content"], "one two", "{answer}");

    // box-b is revoked: its seed goes, the users block no longer lists it, and once the
    // servers have the new block its seed is refused while box-a goes on serving.
    let box_b = std::fs::read_to_string(creds.path().join("worker-box-b.nk")).unwrap();
    let (code, out, err) = run_cli(&["nats", "init", "--out", dir, "--revoke-worker", "box-b"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!creds.path().join("worker-box-b.nk").exists());
    let kept = creds.path().join("revoked-box-b.nk");
    std::fs::write(&kept, &box_b).unwrap();
    server.restart().await.unwrap();
    assert!(connect_worker_seed(&url, &kept).await.is_err(), "a revoked worker identity still connects");
    assert!(connect_worker_seed(&url, &creds.path().join("worker-box-a.nk")).await.is_ok());
    let answer = bitinglip_tests::chat_when_served(&base, "echo", "three four").await;
    assert_eq!(answer["choices"][0]["message"]["content"], "three four", "{answer}\n{}", node.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn each_client_identity_owns_its_tasks_and_reaches_no_one_elses() {
    let (creds, out) = nats_init(&["--client", "alpha", "--client", "beta"]);
    let dir = creds.path().to_str().unwrap();
    assert!(out.contains("owner client-alpha"), "{out}");
    for bad in ["default", "../x", "a-b"] {
        let (code, _, err) = run_cli(&["nats", "init", "--out", dir, "--client", bad]);
        assert_ne!(code, 0, "--client {bad} was taken");
        assert!(err.contains("client identit"), "{err}");
    }
    let (_data, server) = server_with_credentials(creds.path()).await;
    let url = server.url();
    // 20 tokens a second: alpha's 200-word task runs while beta tries its worst.
    let mut config = echo_config(&url, 20.0, 4);
    config.nats.credentials_dir = Some(creds.path().to_path_buf());
    // beta's limits are its own; alpha has none.
    let beta = bitinglip_config::ClientLimits { rpm: Some(4), ..Default::default() };
    config.task_manager.client_limits.insert("beta".into(), beta);
    let (node, base) = spawn_gateway(&config).await;
    bitinglip_tests::chat_when_served(&base, "echo", "ready").await;

    let s = Subjects::default();
    let python = bitinglip_tests::workspace_root().join(".venv/bin/python");
    assert!(python.is_file(), "{} missing: run .ci/setup", python.display());
    let script = bitinglip_tests::workspace_root().join("tests/py/client_isolation.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .args([url.as_str(), dir, &s.events_stream(), "0123456789abcdef"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}\n{}", String::from_utf8_lossy(&out.stderr), node.log());
    let results: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(results.len() >= 24, "{stdout}");
    for r in &results {
        assert_eq!(r["ok"], true, "{r}");
    }
    // Over HTTP the tasks are the identities', and no API key's.
    let tasks: Value = http().get(format!("{base}/v1/tasks?limit=100")).send().await.unwrap().json().await.unwrap();
    let ids: Vec<&str> = tasks["data"].as_array().unwrap().iter().filter_map(|t| t["id"].as_str()).collect();
    assert!(ids.contains(&"alpha-task-1") && ids.contains(&"beta-task-1"), "{tasks}");
}

//! Hub downloads through the same hf-hub code users run, against a local server that
//! speaks the hub's API: a pull with live progress into the standard cache layout, an
//! interrupted download that resumes, a corrupted file that is refused, search, and a
//! pulled model served by id. A hostile hub (names that are paths, sizes that lie,
//! redirects that go nowhere or for ever, longer bodies than asked for) gets each pull
//! refused and writes nothing outside the cache.

use std::time::Duration;

use bitinglip_tests::{
    control_config,
    fake_hub::{Attack, FakeHub},
    get_json, run_cli, spawn_gateway, test_config, worker_config, Arch, ModelDir, ModelSpec, NodeProcess, TestNats,
};
use serde_json::{json, Value};

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

#[tokio::test(flavor = "multi_thread")]
async fn pull_resumes_verifies_searches_and_serves() {
    let nats = TestNats::start().await;
    let (hub, model) = FakeHub::start_with("acme/tiny-chat", SHA, "tiny-chat", Arch::Qwen2).await;
    hub.add_repo_from_dir("other/thing", SHA, &model.path());
    let weights = std::fs::metadata(model.path().join("model.safetensors")).unwrap().len() as usize;
    assert!(weights > 200_000, "weights of {weights} bytes are too small to cut");
    // The first transfer of the weights is cut in the middle of the third chunk.
    hub.cut_once("model.safetensors", 150_000);

    let cache = tempfile::tempdir().unwrap();
    let mut config = test_config(&nats.url());
    hub.configure_cached(&mut config.hub, cache.path());
    config.hub.chunk_size = Some(64 * 1024);
    // In order, so what the cut leaves behind is exactly the chunks before it.
    config.hub.parallel_chunks = Some(1);
    let (mut node, base) = spawn_gateway(&config).await;

    // Pull: progress on stderr, the resolved commit on stdout.
    let (code, out, err) = run_cli(&["models", "pull", "acme/tiny-chat", "--nats", &nats.url()]);
    assert_eq!(code, 0, "{out}\n{err}\n{}", node.log());
    assert!(out.contains(&format!("pulled acme/tiny-chat at {SHA}")), "{out}");
    assert!(err.contains('%') && err.contains("model.safetensors"), "a progress bar: {err}");

    // The standard hub cache layout, shared with other tools.
    let repo = cache.path().join("models--acme--tiny-chat");
    let snapshot = repo.join("snapshots").join(SHA);
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"] {
        assert!(snapshot.join(f).exists(), "{f} in {}", snapshot.display());
    }
    assert_eq!(
        std::fs::read(snapshot.join("model.safetensors")).unwrap(),
        std::fs::read(model.path().join("model.safetensors")).unwrap()
    );
    assert_eq!(std::fs::read_to_string(repo.join("refs/main")).unwrap().trim(), SHA);

    // The cut transfer was taken up again and finished with the right bytes (checked
    // above). hf-hub keeps the contiguous prefix of finished chunks in its partial file;
    // what it re-fetches depends on the order its chunks finished in.
    let served = hub.served("model.safetensors");
    let refetched: usize =
        served.iter().filter(|(a, b)| b > a).map(|(a, b)| b - a + 1).sum::<usize>().saturating_sub(weights);
    eprintln!("re-fetched after the cut: {refetched} of {weights} bytes");
    assert!(refetched < weights + 65536, "{served:?}");
    // The cut failed the download, and the puller started it again: a fresh metadata
    // request (`bytes=0-0`) after the cut.
    let after_cut = hub.served_after_cut("model.safetensors").expect("the transfer was cut");
    assert!(after_cut.contains(&(0, 0)), "the download was not started again after the cut: {after_cut:?}");

    // The registry records the commit and the files with their sizes and sha256.
    let (code, out, err) = run_cli(&["models", "ls", "--json", "--nats", &nats.url()]);
    assert_eq!(code, 0, "{err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    let entry = list.as_array().unwrap().iter().find(|m| m["id"] == "acme/tiny-chat").expect("registered");
    assert_eq!(entry["revision_sha"], SHA);
    let w = entry["files"].as_array().unwrap().iter().find(|f| f["name"] == "model.safetensors").unwrap();
    assert_eq!(w["size"].as_u64().unwrap() as usize, weights);
    assert_eq!(w["sha256"].as_str().unwrap().len(), 64);

    // Search goes to the hub's search API at the configured endpoint.
    let (code, out, err) = run_cli(&["models", "search", "tiny", "--nats", &nats.url()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("acme/tiny-chat") && !out.contains("other/thing"), "{out}");

    // The same over HTTP, described by the OpenAPI document.
    let http = bitinglip_tests::http();
    let found = get_json(&http, &base, "/api/v1/models/search?q=tiny").await;
    assert_eq!(found["data"][0]["id"], "acme/tiny-chat", "{found}");
    let registry = get_json(&http, &base, "/api/v1/models").await;
    assert!(registry["data"].as_array().unwrap().iter().any(|m| m["revision_sha"] == SHA), "{registry}");
    let spec = get_json(&http, &base, "/openapi.json").await;
    assert!(spec["paths"]["/api/v1/models/search"].is_object());
    let cluster = get_json(&http, &base, "/api/v1/cluster").await;
    assert_eq!(cluster["nodes"].as_array().unwrap().len(), 1, "{cluster}");

    // An unknown model is a clear error.
    let (code, _, err) = run_cli(&["models", "pull", "acme/nothing", "--nats", &nats.url()]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown_model"), "{err}");

    // A pulled model is served by its hub id, loaded from the cache.
    let mut w = worker_config(&nats.url());
    w.hub = config.hub.clone();
    w.worker.models.push(bitinglip_config::ModelConfig::new("acme/tiny-chat"));
    let mut worker = NodeProcess::spawn(&w, &["node"]);
    worker.wait_worker_ready("acme/tiny-chat", Duration::from_secs(60)).await;
    node.wait_for_model("acme/tiny-chat", Duration::from_secs(60)).await;
    let body = bitinglip_tests::post_json(
        bitinglip_tests::http().post(format!("{base}/v1/chat/completions")),
        &json!({"model": "acme/tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}),
    )
    .await;
    assert_eq!(body["model"], "acme/tiny-chat", "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_file_is_refused() {
    let nats = TestNats::start().await;
    let (hub, _model) = FakeHub::start_with("acme/broken", SHA, "tiny-bad", Arch::Llama).await;
    hub.corrupt("model.safetensors");
    let cache = tempfile::tempdir().unwrap();
    let mut config = test_config(&nats.url());
    hub.configure_cached(&mut config.hub, cache.path());
    let (_node, _) = spawn_gateway(&config).await;
    let (code, out, err) = run_cli(&["models", "pull", "acme/broken", "--nats", &nats.url()]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("model.safetensors failed verification"), "{err}");
    let snapshot = cache.path().join("models--acme--broken/snapshots").join(SHA);
    assert!(!snapshot.join("model.safetensors").exists(), "the bad file was deleted");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_killed_mid_download_leaves_nothing_stuck_and_another_resumes() {
    let nats = TestNats::start().await;
    let (hub, _model) = FakeHub::start_with("acme/slow", SHA, "tiny-slow", Arch::Llama).await;
    hub.slow(Duration::from_millis(400));
    let cache = tempfile::tempdir().unwrap();
    let hub_config = |c: &mut bitinglip_config::Config| {
        hub.configure_cached(&mut c.hub, cache.path());
        c.hub.chunk_size = Some(64 * 1024);
        c.hub.parallel_chunks = Some(1);
        c.cluster.heartbeat_interval = Duration::from_millis(300);
        c.cluster.node_ttl = Duration::from_secs(2);
    };
    let mut control = control_config(&nats.url());
    hub_config(&mut control);
    let (_front, _) = spawn_gateway(&control).await;
    let mut a = worker_config(&nats.url());
    a.node_id = "puller-a".into();
    hub_config(&mut a);
    let mut node_a = NodeProcess::spawn(&a, &["node"]);
    node_a.wait_node_live(Duration::from_secs(30)).await;

    let status = |filter: &'static str| {
        let url = nats.url();
        async move {
            let (code, out, err) = run_cli(&["models", "status", "--model", "acme/slow", "--nats", &url]);
            assert_eq!(code, 0, "{err}");
            out.lines().any(|l| l.contains(filter)).then_some(out)
        }
    };
    let mut pull = tokio::process::Command::new(bitinglip_tests::bitinglip_bin())
        .args(["models", "pull", "acme/slow", "--nats", &nats.url()])
        .env("BITINGLIP_NATS__CREDENTIALS_DIR", nats.credentials_dir())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    bitinglip_tests::assert_eventually!(
        Duration::from_secs(20),
        async { status("puller-a  downloading").await.is_some() },
        "never downloading"
    );
    node_a.kill9();
    let _ = pull.kill().await;
    // The lease runs out: failed, with the reason; never stuck in downloading.
    bitinglip_tests::assert_eventually!(
        Duration::from_secs(10),
        async { status("puller-a  failed").await.is_some() },
        "never failed"
    );
    let out = status("puller-a").await.unwrap();
    assert!(out.contains("stopped renewing its downloading lease"), "{out}");

    // Another node takes the pull over and finishes it from the same cache.
    let mut c = a.clone();
    c.node_id = "puller-c".into();
    let mut node_c = NodeProcess::spawn(&c, &["node"]);
    node_c.wait_node_live(Duration::from_secs(30)).await;
    hub.slow(Duration::from_millis(1));
    let (code, out, err) = run_cli(&["models", "pull", "acme/slow", "--nats", &nats.url()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(status("puller-c  ready").await.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_hub_token_goes_to_the_hub_only_never_to_the_host_it_redirects_to() {
    let nats = TestNats::start().await;
    let (hub, model) = FakeHub::start_with("acme/tiny-private", SHA, "tiny-private", Arch::Qwen2).await;
    hub.redirect_large_files_to_a_cdn().await;
    let cache = tempfile::tempdir().unwrap();
    let mut config = test_config(&nats.url());
    hub.configure_cached(&mut config.hub, cache.path());
    config.hub.token = Some(bitinglip_config::Secret("hf_test_token_never_to_the_cdn".into()));
    let (node, _) = spawn_gateway(&config).await;
    let (code, out, err) = run_cli(&["models", "pull", "acme/tiny-private", "--nats", &nats.url()]);
    assert_eq!(code, 0, "{out}\n{err}\n{}", node.log());
    let snapshot = cache.path().join("models--acme--tiny-private/snapshots").join(SHA);
    assert_eq!(
        std::fs::read(snapshot.join("model.safetensors")).unwrap(),
        std::fs::read(model.path().join("model.safetensors")).unwrap(),
        "the weights came from the CDN intact"
    );
    // The hub got the token with every file request; the CDN served the weights and never
    // saw it.
    let hub_auth = hub.auth_seen("hub");
    assert!(
        !hub_auth.is_empty() && hub_auth.iter().all(|a| a.as_deref() == Some("Bearer hf_test_token_never_to_the_cdn"))
    );
    let cdn_auth = hub.auth_seen("cdn");
    assert!(!cdn_auth.is_empty(), "the weights were redirected to the CDN");
    assert!(cdn_auth.iter().all(Option::is_none), "the CDN saw {cdn_auth:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn up_with_a_hub_model_shows_the_download_then_the_load() {
    use tokio::io::AsyncBufReadExt;
    let (hub, _model) = FakeHub::start_with("acme/tiny-up", SHA, "tiny-up", Arch::Qwen2).await;
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    // No server runs at this URL: `up` starts its own.
    let mut config = test_config(&format!("nats://127.0.0.1:{}", bitinglip_tests::free_port()));
    config.data_dir = data.path().to_path_buf();
    hub.configure_cached(&mut config.hub, cache.path());
    config.hub.chunk_size = Some(64 * 1024);
    let file = data.path().join("bitinglip.toml");
    std::fs::write(&file, toml::to_string(&config).unwrap()).unwrap();
    // What a person sees on the terminal, as `up` writes it there: the bar to 100%, then
    // the load, then that it serves.
    let mut up = tokio::process::Command::new(bitinglip_tests::bitinglip_bin())
        .args(["up", "--model", "acme/tiny-up", "--config", file.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut terminal = tokio::io::BufReader::new(up.stderr.take().unwrap());
    let mut seen = Vec::new();
    let mut line = Vec::new();
    let read = async {
        loop {
            line.clear();
            let n = terminal.read_until(b'\n', &mut line).await.unwrap();
            if n == 0 {
                break;
            }
            // The bar redraws with `\r` on one line: each redraw is a piece here.
            for piece in String::from_utf8_lossy(&line).split('\r') {
                let piece = piece.trim_matches(['\n', ' ']).to_string();
                let done = piece.ends_with("loaded; serving");
                seen.push(piece);
                if done {
                    return;
                }
            }
        }
    };
    let finished = tokio::time::timeout(Duration::from_secs(120), read).await;
    let pid = nix::unistd::Pid::from_raw(up.id().unwrap() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let _ = tokio::time::timeout(Duration::from_secs(30), up.wait()).await;
    assert!(finished.is_ok(), "`up` never said it serves: {seen:#?}");
    let at = |what: &str| seen.iter().position(|l| l.contains(what)).unwrap_or_else(|| panic!("{what}: {seen:#?}"));
    let bar = seen.iter().position(|l| l.contains("100%") && l.contains("model.safetensors"));
    let bar = bar.unwrap_or_else(|| panic!("a progress bar to 100%: {seen:#?}"));
    let (loading, serving) = (at("bitinglip: loading acme/tiny-up"), at("bitinglip: acme/tiny-up loaded; serving"));
    assert!(bar < loading && loading < serving, "{seen:#?}");
}

/// Every file and folder under `root` but `skip`, with its bytes (None for a folder).
fn tree(
    root: &std::path::Path,
    skip: &std::path::Path,
) -> std::collections::BTreeMap<std::path::PathBuf, Option<Vec<u8>>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path == skip {
                continue;
            }
            if path.is_dir() {
                out.insert(path.clone(), None);
                stack.push(path);
            } else {
                out.insert(path.clone(), Some(std::fs::read(&path).unwrap_or_default()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_hub_gets_every_pull_refused_and_writes_nothing_outside_the_cache() {
    let nats = TestNats::start().await;
    let hub = FakeHub::start().await;
    let model = ModelDir::generate("tiny-hostile", &ModelSpec::tiny(Arch::Llama));
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("a/b/cache");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::write(root.path().join("victim.txt"), b"keep me").unwrap();
    std::fs::write(root.path().join("a/victim.txt"), b"keep me too").unwrap();
    // From `cache/models--acme--x/blobs` (or `…/snapshots`), five levels up is the root.
    let up = "../../../../../";
    let absolute = root.path().join("victim.txt").display().to_string();
    let cases: Vec<(&str, Attack, &str)> = vec![
        ("acme/sha-path", Attack::InfoSha(format!("{up}victim-dir")), "no commit id"),
        ("acme/name-up", Attack::FileName(format!("{up}victim.txt")), "leaves the model's folder"),
        ("acme/name-absolute", Attack::FileName(absolute), "leaves the model's folder"),
        ("acme/name-backslash", Attack::FileName("..\\..\\victim.txt".into()), "leaves the model's folder"),
        ("acme/listed-huge", Attack::ListedSize(u64::MAX / 2), "hub.max_pull_bytes"),
        ("acme/disk-short", Attack::ListedSize(200 << 30), "not enough disk"),
        ("acme/etag-path", Attack::Etag(format!("\"{up}victim.txt\"")), "no blob id"),
        ("acme/commit-path", Attack::Commit(format!("{up}victim-dir")), "no commit id"),
        ("acme/range-huge", Attack::ContentRangeSize(u64::MAX.to_string()), "this pull may still fetch"),
        ("acme/range-garbage", Attack::ContentRangeSize("lots".into()), "refused"),
        ("acme/no-location", Attack::RedirectWithoutLocation, "location"),
        ("acme/redirect-loop", Attack::RedirectLoop, "redirect"),
        ("acme/extra-bytes", Attack::ExtraBytes(1 << 20), "more bytes than the range"),
    ];
    for (id, attack, _) in &cases {
        hub.add_repo_from_dir(id, SHA, &model.path());
        hub.attack(id, attack.clone());
    }
    hub.add_repo_from_dir("acme/fine", SHA, &model.path());
    let before = tree(root.path(), &cache);

    let mut config = test_config(&nats.url());
    hub.configure_cached(&mut config.hub, &cache);
    let (node, _) = spawn_gateway(&config).await;
    for (id, attack, says) in &cases {
        let (code, out, err) = run_cli(&["models", "pull", id, "--nats", &nats.url()]);
        assert_ne!(code, 0, "{attack:?}: {out}");
        assert!(err.to_lowercase().contains(says), "{attack:?} should say {says:?}: {err}");
        assert_eq!(tree(root.path(), &cache), before, "{attack:?} changed something outside the cache");
    }
    // The node is none the worse: a pull from an honest repository works.
    let (code, out, err) = run_cli(&["models", "pull", "acme/fine", "--nats", &nats.url()]);
    assert_eq!(code, 0, "{out}\n{err}\n{}", node.log());
    assert!(cache.join("models--acme--fine/snapshots").join(SHA).join("model.safetensors").exists());
    assert_eq!(tree(root.path(), &cache), before);
}

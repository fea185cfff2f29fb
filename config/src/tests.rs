//! Layering and validation tests. They build their sources directly and never touch the
//! process environment.

use std::{collections::BTreeMap, io::Write, time::Duration};

use super::*;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn defaults_are_valid() {
    let c = Config::load(Sources::default()).unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.roles.len(), 5);
}

#[test]
fn layers_apply_in_order_file_env_flags() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        file,
        "roles = [\"worker\"]\n[gateway]\nhttp = \"127.0.0.1:1111\"\nmax_body_bytes = 4096\n[cluster]\nheartbeat_interval = \"1s\"\n[[worker.models]]\nsource = \"org/model\"\nmax_sequences = 2"
    )
    .unwrap();
    let c = Config::load(Sources {
        file: Some(file.path().to_path_buf()),
        env: env(&[
            ("BITINGLIP_GATEWAY__HTTP", "127.0.0.1:2222"),
            ("BITINGLIP_NATS__SERVERS", "nats://a:1,nats://b:2"),
            ("OTHER", "ignored"),
        ]),
        overrides: vec![("gateway.http".into(), OverrideValue::Str("127.0.0.1:3333".into()))],
    })
    .unwrap();
    assert_eq!(c.roles, vec![Role::Worker]);
    assert_eq!(c.gateway.http, "127.0.0.1:3333");
    assert_eq!(c.gateway.max_body_bytes, 4096);
    assert_eq!(c.nats.servers, vec!["nats://a:1", "nats://b:2"]);
    assert_eq!(c.cluster.heartbeat_interval, Duration::from_secs(1));
    assert_eq!(c.worker.models[0].source, "org/model");
    assert_eq!(c.worker.models[0].max_sequences, 2);
    assert_eq!(c.worker.models[0].revision, "main");
}

#[test]
fn bad_values_name_their_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("BITINGLIP_GATEWAY__HTTP", "not-an-addr", "gateway.http"),
        ("BITINGLIP_NATS__SERVERS", "http://x:1", "nats.servers"),
        ("BITINGLIP_JETSTREAM__REPLICAS", "9", "jetstream.replicas"),
        ("BITINGLIP_CLUSTER__NODE_TTL", "1s", "cluster.node_ttl"),
        ("BITINGLIP_LOG__FORMAT", "xml", "log.format"),
        ("BITINGLIP_NATS__SUBJECT_ROOT", "a..b", "nats.subject_root"),
        ("BITINGLIP_NATS__EMBEDDED__SYNC", "sometimes", "nats.embedded.sync"),
        ("BITINGLIP_HUB__ENDPOINT", "http://mirror.example:8080", "hub.allow_http"),
        ("BITINGLIP_HUB__ENDPOINT", "ftp://mirror.example", "hub.endpoint"),
        ("BITINGLIP_HUB__CHUNK_SIZE", "0", "hub.chunk_size"),
        ("BITINGLIP_HUB__MAX_PULL_BYTES", "0", "hub.max_pull_bytes"),
        ("BITINGLIP_GATEWAY__MAX_CONNECTIONS", "1", "gateway.max_connections"),
        ("BITINGLIP_GATEWAY__IDLE_TIMEOUT", "0s", "gateway.idle_timeout"),
    ];
    for (k, v, key) in cases {
        let err = Config::load(Sources { env: env(&[(k, v)]), ..Default::default() }).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(key), "{k}={v}: {text}");
    }
}

#[test]
fn unknown_keys_and_wrong_types_are_refused() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "[gateway]\nhtttp = \"x\"").unwrap();
    let err = Config::load(Sources { file: Some(file.path().into()), ..Default::default() }).unwrap_err();
    assert!(err.to_string().contains("htttp"), "{err}");

    let err =
        Config::load(Sources { env: env(&[("BITINGLIP_GATEWAY__MAX_BODY_BYTES", "lots")]), ..Default::default() })
            .unwrap_err();
    assert!(err.to_string().contains("max_body_bytes"), "{err}");

    let err = Config::load(Sources { file: Some("/no/such/file.toml".into()), ..Default::default() }).unwrap_err();
    assert!(err.to_string().contains("/no/such/file.toml"), "{err}");
}

#[test]
fn secrets_never_print() {
    let c =
        Config::load(Sources { env: env(&[("BITINGLIP_NATS__TOKEN", "s3cret-token")]), ..Default::default() }).unwrap();
    assert_eq!(c.nats.token.as_ref().unwrap().expose(), "s3cret-token");
    let printed = format!("{c:?}");
    assert!(!printed.contains("s3cret"));
    assert!(printed.contains("<redacted>"));
}

#[test]
fn the_example_file_is_valid_and_complete() {
    // The folder cargo runs the test from, not the one it was built in: a test binary
    // built from another checkout of the same source is reused by a shared target folder.
    let dir = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    let path = std::path::Path::new(&dir).join("bitinglip.example.toml");
    let c = Config::load(Sources { file: Some(path), ..Default::default() }).unwrap();
    assert_eq!(c.roles.len(), 5);
}

#[test]
fn deployments_and_memory_sizes_load_and_are_checked() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        file,
        "[worker]\nmemory = \"8GiB\"\n[cluster]\nidle_unload = \"10m\"\n[[cluster.deployments]]\nsource = \"org/m\"\nreplicas = 2\nmin_memory = \"4GB\"\ndevice = \"cuda\""
    )
    .unwrap();
    let c = Config::load(Sources { file: Some(file.path().to_path_buf()), ..Default::default() }).unwrap();
    assert_eq!(c.worker.memory, Some(8 << 30));
    assert_eq!(c.cluster.idle_unload, Duration::from_secs(600));
    let d = &c.cluster.deployments[0];
    assert_eq!((d.replicas, d.min_memory, d.device.as_deref()), (2, Some(4_000_000_000), Some("cuda")));

    let mut bad = tempfile::NamedTempFile::new().unwrap();
    writeln!(bad, "[[cluster.deployments]]\nsource = \"org/m\"\ndevice = \"tpu\"").unwrap();
    let err = Config::load(Sources { file: Some(bad.path().to_path_buf()), ..Default::default() }).unwrap_err();
    assert!(err.to_string().contains("cluster.deployments[0].device"), "{err}");
    let mut bad = tempfile::NamedTempFile::new().unwrap();
    writeln!(bad, "[worker]\nmemory = \"8 parsecs\"").unwrap();
    let err = Config::load(Sources { file: Some(bad.path().to_path_buf()), ..Default::default() }).unwrap_err();
    assert!(err.to_string().contains("parsecs"), "{err}");
}

#[test]
fn unknown_roles_and_engines_are_refused_with_the_bad_name() {
    let load = |toml: &str| {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "{toml}").unwrap();
        Config::load(Sources { file: Some(file.path().to_path_buf()), env: BTreeMap::new(), overrides: vec![] })
    };
    let err = load("roles = [\"worker\", \"wrker\"]").unwrap_err().to_string();
    assert!(err.contains("wrker") && err.contains("roles"), "{err}");
    let err = load("[[worker.models]]\nsource = \"org/model\"\nengine = \"turbo\"").unwrap_err().to_string();
    assert!(err.contains("turbo") && err.contains("engine"), "{err}");
    let err = env_roles_error();
    assert!(err.contains("wrker"), "{err}");
}

fn env_roles_error() -> String {
    Config::load(Sources { file: None, env: env(&[("BITINGLIP_ROLES", "gateway,wrker")]), overrides: vec![] })
        .unwrap_err()
        .to_string()
}

#[test]
fn a_config_built_in_code_with_an_unknown_role_is_refused() {
    let c = Config { roles: vec![Role::Unknown], ..Config::default() };
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("roles"), "{err}");
}

#[test]
fn credentials_in_server_urls_never_print() {
    assert_eq!(redact_url("nats://alice:s3cret@nats.example:4222"), "nats://<redacted>@nats.example:4222");
    assert_eq!(redact_url("tls://tok3n@host"), "tls://<redacted>@host");
    assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
    assert_eq!(redact_urls(&["nats://a:b@h1".into(), "nats://h2".into()]), "nats://<redacted>@h1,nats://h2");
    let c = Config::load(Sources {
        env: env(&[("BITINGLIP_NATS__SERVERS", "http://alice:s3cret@h")]),
        ..Default::default()
    });
    let err = c.unwrap_err().to_string();
    assert!(!err.contains("s3cret") && err.contains("nats.servers"), "{err}");
}

#[test]
fn an_http_hub_needs_allow_http() {
    let plain = env(&[("BITINGLIP_HUB__ENDPOINT", "http://10.0.0.5:8080")]);
    assert!(Config::load(Sources { env: plain.clone(), ..Default::default() }).is_err());
    let mut allowed = plain;
    allowed.insert("BITINGLIP_HUB__ALLOW_HTTP".into(), "true".into());
    let c = Config::load(Sources { env: allowed, ..Default::default() }).unwrap();
    assert!(c.hub.allow_http);
    assert_eq!(c.hub.max_pull_bytes(), DEFAULT_MAX_PULL_BYTES);
}

#[test]
fn client_limits_are_named_by_identity_and_never_zero() {
    let mut c = Config::default();
    c.task_manager.client_limits.insert("*".into(), ClientLimits { rpm: Some(60), ..Default::default() });
    c.task_manager.client_limits.insert("billing".into(), ClientLimits { tpm: Some(1000), ..Default::default() });
    assert!(c.validate().is_ok());
    let mut bad = c.clone();
    bad.task_manager.client_limits.insert("a-b".into(), ClientLimits::default());
    assert!(bad.validate().unwrap_err().to_string().contains("task_manager.client_limits"));
    let mut zero = c;
    zero.task_manager.client_limits.insert("x".into(), ClientLimits { rpm: Some(0), ..Default::default() });
    assert!(zero.validate().unwrap_err().to_string().contains("task_manager.client_limits.x"));
}

#[test]
fn the_gpu_budget_is_a_fraction_or_bytes_and_says_what_is_wrong() {
    let load =
        |v: &str| Config::load(Sources { env: env(&[("BITINGLIP_WORKER__GPU_BUDGET", v)]), ..Default::default() });
    assert_eq!(load("0.8").unwrap().worker.gpu_budget, GpuBudget::Fraction(0.8));
    assert_eq!(load("70GiB").unwrap().worker.gpu_budget, GpuBudget::Bytes(70 << 30));
    assert_eq!(Config::default().worker.gpu_budget.of(100), 90);
    assert_eq!(GpuBudget::Bytes(70 << 30).of(24 << 30), 24 << 30, "never more than the card");
    for bad in ["1.5", "0", "lots"] {
        let err = load(bad).unwrap_err().to_string();
        assert!(err.contains("gpu_budget") || err.contains(bad), "{bad}: {err}");
    }
}

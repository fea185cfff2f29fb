//! What provisioning may change on a running cluster. New settings that keep every stored
//! message (a longer heartbeat TTL, a higher limit) reach existing streams and buckets on
//! the next start; settings that would drop stored data (a lower byte limit, a shorter
//! age) are left alone until `bitinglip admin migrate` applies them. The events stream
//! caps each task, so one task cannot evict another's replay. A stream or bucket made
//! before provisioning with settings it never makes (a republish, sources, a mirror,
//! foreign subjects), as a leaked seed could, is refused rather than adopted.

use std::time::Duration;

use bitinglip_bus_schema::Subjects;
use bitinglip_nats::{Bus, Changes, Store};
use bitinglip_tests::{run_cli_env, test_config, TestNats};

async fn stream_config(js: &async_nats::jetstream::Context, name: &str) -> async_nats::jetstream::stream::Config {
    js.get_stream(name).await.unwrap().info().await.unwrap().config.clone()
}

/// A test server, with a JetStream context and a bus (as provisioning uses it) on it.
async fn server_and_bus() -> (TestNats, async_nats::jetstream::Context, Bus) {
    let nats = TestNats::start().await;
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let bus = Bus::new(client, Subjects::default(), "provisioning-test", Duration::from_secs(5));
    (nats, js, bus)
}

#[tokio::test(flavor = "multi_thread")]
async fn settings_that_keep_data_apply_and_those_that_drop_it_wait_for_migrate() {
    let (nats, js, bus) = server_and_bus().await;
    let s = Subjects::default();
    let mut config = test_config(&nats.url());
    config.cluster.node_ttl = Duration::from_secs(3);
    Store::provision(&bus, &config).await.unwrap();
    let nodes = format!("KV_{}", s.nodes_bucket());
    let tasks = format!("KV_{}", s.tasks_bucket());
    assert_eq!(stream_config(&js, &nodes).await.max_age, Duration::from_secs(3));
    let events = stream_config(&js, &s.events_stream()).await;
    assert_eq!(events.max_messages_per_subject, 100_000, "one task's events are capped");
    let before = stream_config(&js, &s.tasks_stream()).await.max_bytes;
    assert_eq!(stream_config(&js, &tasks).await.max_bytes, config.jetstream.tasks_max_bytes);

    // A longer TTL and a higher limit: applied by the next start.
    config.cluster.node_ttl = Duration::from_secs(10);
    config.jetstream.tasks_max_bytes *= 2;
    Store::provision(&bus, &config).await.unwrap();
    assert_eq!(stream_config(&js, &nodes).await.max_age, Duration::from_secs(10));
    assert_eq!(stream_config(&js, &tasks).await.max_bytes, config.jetstream.tasks_max_bytes);

    // A lower queue limit and a shorter record age would drop data: left as they are.
    config.task_manager.queue_max_bytes = before / 2;
    config.jetstream.tasks_max_age = Duration::from_secs(3600);
    Store::provision(&bus, &config).await.unwrap();
    assert_eq!(stream_config(&js, &s.tasks_stream()).await.max_bytes, before);
    assert_eq!(stream_config(&js, &tasks).await.max_age, Duration::from_secs(24 * 3600));
    // A node without the permission changes nothing at all.
    config.cluster.node_ttl = Duration::from_secs(20);
    Store::provision_as(&bus, &config, Changes::None).await.unwrap();
    assert_eq!(stream_config(&js, &nodes).await.max_age, Duration::from_secs(10));

    // `bitinglip admin migrate` applies them, as the admin user.
    let url = nats.url();
    let (code, out, err) = run_cli_env(
        &["admin", "migrate", "--nats", &url],
        &[
            ("BITINGLIP_TASK_MANAGER__QUEUE_MAX_BYTES", &(before / 2).to_string()),
            ("BITINGLIP_JETSTREAM__TASKS_MAX_AGE", "1h"),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(stream_config(&js, &s.tasks_stream()).await.max_bytes, before / 2);
    assert_eq!(stream_config(&js, &tasks).await.max_age, Duration::from_secs(3600));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bucket_or_stream_made_first_with_a_republish_or_foreign_subjects_is_refused_not_adopted() {
    use async_nats::jetstream::{kv, stream};
    let (nats, js, bus) = server_and_bus().await;
    let s = Subjects::default();
    let config = test_config(&nats.url());

    // The events stream, made first, also capturing subjects outside BitingLip's.
    js.create_stream(stream::Config {
        name: s.events_stream(),
        subjects: vec![s.all_task_events(), "elsewhere.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let err = Store::provision(&bus, &config).await.unwrap_err().to_string();
    assert!(err.contains(&s.events_stream()) && err.contains("elsewhere.>"), "{err}");
    js.delete_stream(s.events_stream()).await.unwrap();

    // The API keys' bucket, made first, republishing every key to a subject its maker reads.
    let republish = stream::Republish { source: ">".into(), destination: "stolen.>".into(), headers_only: false };
    js.create_key_value(kv::Config { bucket: s.keys_bucket(), republish: Some(republish), ..Default::default() })
        .await
        .unwrap();
    let err = Store::provision(&bus, &config).await.unwrap_err().to_string();
    assert!(err.contains(&s.keys_bucket()) && err.contains("republish"), "{err}");
    js.delete_key_value(s.keys_bucket()).await.unwrap();

    // Made by provisioning itself, everything is adopted on the next start.
    Store::provision(&bus, &config).await.unwrap();
    Store::provision(&bus, &config).await.unwrap();
}

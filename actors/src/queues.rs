//! What a model's queue holds right now, read from the tasks stream: tasks waiting, tasks
//! delivered and not yet acked (running), and the age of the oldest. `/metrics` and
//! `bitinglip status` both show it.

use bitinglip_bus_schema::Priority;
use bitinglip_config::JetStreamConfig;
use bitinglip_nats::Bus;

/// One queue: a model and a priority class.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueStats {
    /// The model.
    pub model: String,
    /// The class.
    pub priority: Priority,
    /// Tasks not yet delivered to a worker.
    pub waiting: u64,
    /// Tasks delivered and not yet acked.
    pub running: u64,
    /// Age of the oldest task still in the queue (waiting or running), in seconds.
    pub oldest_age_secs: f64,
}

/// Age of the oldest task on a queue subject (waiting or running: a work queue keeps a
/// task until it is acked), in ms; 0 when there is none.
pub async fn oldest_age_ms(bus: &Bus, subject: &str) -> u64 {
    let Ok(stream) = bus.jetstream().get_stream_no_info(bus.subjects().tasks_stream()).await else { return 0 };
    match stream.get_first_raw_message_by_subject(subject, 0).await {
        Ok(msg) => {
            let at = msg.time.unix_timestamp_nanos() / 1_000_000;
            (bitinglip_nats::now_ms() as i128 - at).max(0) as u64
        }
        Err(_) => 0,
    }
}

/// The queues of `models`, both classes each. A queue whose consumer does not exist yet
/// (no worker ever served the model) reads as empty.
pub async fn queue_stats(bus: &Bus, jetstream: &JetStreamConfig, models: &[String]) -> Result<Vec<QueueStats>, String> {
    let subjects = bus.subjects();
    let stream = bus.jetstream().get_stream(subjects.tasks_stream()).await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for model in models {
        for priority in [Priority::Interactive, Priority::Batch] {
            let config = bitinglip_nats::worker_consumer_config(subjects, model, priority, jetstream);
            let name = config.durable_name.unwrap_or_default();
            let (waiting, running) = match stream.consumer_info(&name).await {
                Ok(info) => (info.num_pending, info.num_ack_pending as u64),
                Err(_) => (0, 0),
            };
            let oldest_age_secs = oldest_age_ms(bus, &subjects.queue(model, priority)).await as f64 / 1000.0;
            out.push(QueueStats { model: model.clone(), priority, waiting, running, oldest_age_secs });
        }
    }
    Ok(out)
}

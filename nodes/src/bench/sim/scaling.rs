//! The simulated cluster's scaling step: every deployment autoscaled at rest (what the
//! leader's reading of the load costs), then a burst on one (how fast it decides).

use std::time::{Duration, Instant};

use bitinglip_nats::Bus;

use super::{cpu_secs, deployments, platform, set_echo, until, DEPLOYMENTS};

/// What autoscaling costs and how fast it decides, on the simulated cluster.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScalingRow {
    /// Bus messages a second at rest with every deployment autoscaled, less those at rest
    /// without: what the leader's reading of the load costs, a second (one step a second).
    pub(crate) step_messages: f64,
    /// The control plane's CPU at rest with every deployment autoscaled, in cores.
    pub(crate) control_cpu: f64,
    /// From a burst of tasks on an idle autoscaled deployment to its first decision up.
    pub(crate) decision: Duration,
    /// From the burst to every replica decided serving.
    pub(crate) serving: Duration,
}

/// Autoscales every deployment, measures the bus and the control plane at rest, then
/// sends a burst to one deployment and times its first decision up and its replicas.
pub(super) async fn scaling_step<F, Fut>(
    bus: &Bus,
    client: &platform::Client,
    in_msgs: &F,
    control_pid: u32,
    rest_per_sec: f64,
) -> anyhow::Result<ScalingRow>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<u64>>,
{
    let autoscale = |max| bitinglip_bus_schema::Autoscale {
        min_replicas: 1,
        max_replicas: max,
        signal: bitinglip_bus_schema::ScaleSignal::QueueWait,
        target_ms: 2000,
        idle_ms: None,
    };
    for j in 0..DEPLOYMENTS {
        let model = format!("sim-m{j:03}");
        set_echo(bus, &model, 1, 0.0, 8, Some(autoscale(3))).await?;
    }
    // Settle, then the same window as at rest before.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (m0, c0, began) = (in_msgs().await?, cpu_secs(control_pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let secs = began.elapsed().as_secs_f64();
    let per_sec = in_msgs().await?.saturating_sub(m0) as f64 / secs;
    let control_cpu = (cpu_secs(control_pid) - c0) / secs;

    // A burst: 16 tasks of 100 tokens at 20 a second (5 s each) on one replica of 2
    // sequences: 16 fill 8 replicas, the most is 4.
    set_echo(bus, "sim-burst", 1, 20.0, 2, Some(autoscale(4))).await?;
    until("the burst deployment serving", Duration::from_secs(120), || async {
        deployments(bus).await.iter().any(|d| d.deployment.model == "sim-burst" && !d.serving.is_empty())
    })
    .await?;
    let words: Vec<String> = (0..100).map(|i| format!("w{i}")).collect();
    let burst = Instant::now();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (client, chat) = (client.clone(), platform::chat("sim-burst", &words.join(" "), 100));
            tokio::spawn(async move { platform::nats_request(&client, chat).await })
        })
        .collect();
    let decision = until("the first decision up", Duration::from_secs(60), || async {
        deployments(bus).await.iter().any(|d| d.deployment.model == "sim-burst" && d.deployment.replicas > 1)
    })
    .await?;
    let serving = until("the decided replicas serving", Duration::from_secs(120), || async {
        deployments(bus)
            .await
            .iter()
            .any(|d| d.deployment.model == "sim-burst" && d.serving.len() >= 4.min(d.deployment.replicas as usize))
    })
    .await
    .map(|_| burst.elapsed())?;
    for t in tasks {
        let _ = t.await;
    }
    Ok(ScalingRow { step_messages: (per_sec - rest_per_sec).max(0.0), control_cpu, decision, serving })
}

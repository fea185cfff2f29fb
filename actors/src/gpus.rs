//! The GPUs of this node, read through NVML, the NVIDIA driver's management library,
//! loaded at run time when present: a node without the driver is a CPU node, with no
//! error. The heartbeat carries them (index, UUID, name, memory total, used and free,
//! compute capability, utilization) with the budget BitingLip may use of each
//! (`worker.gpu_budget`), and so do `bitinglip status`, `/api/v1/cluster` and `/metrics`.

use std::sync::OnceLock;

use bitinglip_bus_schema::{DeviceKind, GpuInfo};
use bitinglip_config::GpuBudget;

/// NVML, initialized once; `None` where the driver's library is not there.
fn nvml() -> Option<&'static nvml_wrapper::Nvml> {
    static NVML: OnceLock<Option<nvml_wrapper::Nvml>> = OnceLock::new();
    NVML.get_or_init(|| match nvml_wrapper::Nvml::init() {
        Ok(nvml) => Some(nvml),
        Err(err) => {
            tracing::debug!(cause = %err, "no NVML: this node has no NVIDIA GPU BitingLip can see");
            None
        }
    })
    .as_ref()
}

/// What this node's engines run on: `cuda` or `metal` in a build with that backend,
/// else (or with `worker.force_cpu`) `cpu`. Test builds with a GPU inventory from the
/// seam below count as `cuda`, so that placement on GPUs is tested without one.
pub fn device(force_cpu: bool) -> DeviceKind {
    #[cfg(feature = "fault-injection")]
    if !force_cpu && std::env::var_os("TEST_NVML_GPUS").is_some() {
        return DeviceKind::Cuda;
    }
    if force_cpu {
        DeviceKind::Cpu
    } else if cfg!(feature = "cuda") {
        DeviceKind::Cuda
    } else if cfg!(feature = "metal") {
        DeviceKind::Metal
    } else {
        DeviceKind::Cpu
    }
}

/// Each GPU as NVML reports it now, with `budget` of its memory BitingLip may use.
pub fn inventory(budget: GpuBudget) -> Vec<GpuInfo> {
    #[cfg(feature = "fault-injection")]
    if let Some(gpus) = test_inventory() {
        return gpus.into_iter().map(|g| GpuInfo { budget: budget.of(g.memory_total), ..g }).collect();
    }
    let Some(nvml) = nvml() else { return Vec::new() };
    let count = nvml.device_count().unwrap_or(0);
    (0..count)
        .filter_map(|index| {
            let device = nvml.device_by_index(index).ok()?;
            let memory = device.memory_info().ok()?;
            Some(GpuInfo {
                index,
                uuid: device.uuid().unwrap_or_default(),
                name: device.name().unwrap_or_default(),
                memory_total: memory.total,
                memory_used: memory.used,
                memory_free: memory.free,
                budget: budget.of(memory.total),
                compute_capability: device.cuda_compute_capability().ok().map(|c| format!("{}.{}", c.major, c.minor)),
                utilization: device.utilization_rates().ok().map(|u| u.gpu),
            })
        })
        .collect()
}

/// The tests' seam (test builds only): GPUs given as JSON in `TEST_NVML_GPUS`, so
/// that inventory, status and placement are tested on machines without one.
#[cfg(feature = "fault-injection")]
fn test_inventory() -> Option<Vec<GpuInfo>> {
    let raw = std::env::var("TEST_NVML_GPUS").ok()?;
    match serde_json::from_str(&raw) {
        Ok(gpus) => Some(gpus),
        Err(err) => {
            tracing::error!(cause = %err, "TEST_NVML_GPUS is not a list of GPUs");
            None
        }
    }
}

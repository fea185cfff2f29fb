//! Deployments (`deploy.<model>`), placements (`place.<node>`) and why a deployment is
//! short of replicas (`unplaced.<model>`) in the deployments bucket. Every deployment write is a compare-and-swap, so concurrent writers (two task
//! managers loading the same model on demand, a CLI and the leader) never lose each
//! other's change. Placements are written by the leader only, and followed by the node
//! they name.

use std::{collections::BTreeMap, time::Duration};

use async_nats::jetstream::kv;
use bitinglip_bus_schema::{encode_token, Deployment, NodePlacement, Replica, Unplaced};
use futures::StreamExt;

use super::{Bucket, Step, Store, StoreError};
use crate::now_ms;

/// The deployments and placements.
pub struct Deployments<'a> {
    bucket: &'a Bucket,
}

impl Store {
    /// The deployments and placements.
    pub fn deployments(&self) -> Deployments<'_> {
        Deployments { bucket: &self.inner.deployments }
    }
}

const DEPLOY: &str = "deploy.";
const PLACE: &str = "place.";
const UNPLACED: &str = "unplaced.";

/// The key of a model's deployment (documented in `docs/NATS-API.md`: outside readers use it).
pub fn deployment_key(model: &str) -> String {
    format!("{DEPLOY}{}", encode_token(model))
}

/// The key of a node's placement.
pub fn placement_key(node: &str) -> String {
    format!("{PLACE}{}", encode_token(node))
}

impl Deployments<'_> {
    /// One model's deployment.
    pub async fn get(&self, model: &str) -> Result<Option<Deployment>, StoreError> {
        self.bucket.get(&deployment_key(model)).await
    }

    /// Every deployment, by model id.
    pub async fn list(&self) -> Result<Vec<Deployment>, StoreError> {
        let mut all: Vec<Deployment> = self.bucket.scan(|k| k.starts_with(DEPLOY)).await?.into_values().collect();
        all.sort_by(|a, b| a.model.cmp(&b.model));
        Ok(all)
    }

    /// Reads, changes and writes one deployment with compare-and-swap, reading again on a
    /// concurrent change. `change` gets the current deployment (or none) and returns the
    /// new one, or none to leave it as it is; the answer is the deployment as stored.
    /// Creation and update times are kept here.
    pub async fn modify<E>(
        &self,
        model: &str,
        mut change: impl FnMut(Option<Deployment>) -> Result<Option<Deployment>, E>,
    ) -> Result<Result<Option<Deployment>, E>, StoreError> {
        let now = now_ms();
        let (answer, _) = self
            .bucket
            .modify(&deployment_key(model), |current: Option<Deployment>| {
                let created = current.as_ref().map(|d| d.created_ms);
                Ok(match change(current.clone()) {
                    Err(e) => Step::Done(Err(e)),
                    Ok(None) => Step::Done(Ok(current)),
                    Ok(Some(mut new)) => {
                        new.updated_ms = now;
                        new.created_ms = created.unwrap_or(now);
                        Step::Write(new.clone(), Ok(Some(new)))
                    }
                })
            })
            .await?;
        Ok(answer)
    }

    /// Removes a deployment; true when there was one.
    pub async fn delete(&self, model: &str) -> Result<bool, StoreError> {
        if self.get(model).await?.is_none() {
            return Ok(false);
        }
        self.bucket.delete(&deployment_key(model)).await?;
        Ok(true)
    }

    /// Every node's placement, by node id.
    pub async fn placements(&self) -> Result<BTreeMap<String, NodePlacement>, StoreError> {
        Ok(self
            .bucket
            .scan::<NodePlacement>(|k| k.starts_with(PLACE))
            .await?
            .into_values()
            .map(|p| (p.node.clone(), p))
            .collect())
    }

    /// Writes one node's placement (the leader only).
    pub async fn write_placement(&self, placement: &NodePlacement) -> Result<(), StoreError> {
        self.bucket.put(&placement_key(&placement.node), placement).await.map(drop)
    }

    /// Removes a node's placement (the node is gone).
    pub async fn delete_placement(&self, node: &str) -> Result<(), StoreError> {
        self.bucket.delete(&placement_key(node)).await
    }

    /// Why deployments are short of replicas, by model id.
    pub async fn unplaced(&self) -> Result<BTreeMap<String, Unplaced>, StoreError> {
        Ok(self
            .bucket
            .scan::<Unplaced>(|k| k.starts_with(UNPLACED))
            .await?
            .into_values()
            .map(|u| (u.model.clone(), u))
            .collect())
    }

    /// Records why a deployment is short of replicas (the leader only).
    pub async fn write_unplaced(&self, unplaced: &Unplaced) -> Result<(), StoreError> {
        self.bucket.put(&format!("{UNPLACED}{}", encode_token(&unplaced.model)), unplaced).await.map(drop)
    }

    /// Forgets why a deployment was short (it is not any more, or it is gone).
    pub async fn delete_unplaced(&self, model: &str) -> Result<(), StoreError> {
        self.bucket.delete(&format!("{UNPLACED}{}", encode_token(model))).await
    }

    /// Follows `node`'s placement, its current value first: `placed` gets the replicas
    /// placed there after each change (none once it is deleted) and returns false to
    /// stop. Runs until then, restarting the watch when it ends.
    pub async fn follow_placement(&self, node: &str, mut placed: impl FnMut(Vec<Replica>) -> bool) {
        let key = placement_key(node);
        loop {
            match self.bucket.kv.watch_with_history(&key).await {
                Ok(mut watch) => {
                    while let Some(Ok(entry)) = watch.next().await {
                        let replicas = match entry.operation {
                            kv::Operation::Put => match self.bucket.decode::<NodePlacement>(&key, &entry.value) {
                                Ok(p) => p.replicas,
                                Err(err) => {
                                    tracing::warn!(cause = %err, "undecodable placement ignored");
                                    continue;
                                }
                            },
                            kv::Operation::Delete | kv::Operation::Purge => Vec::new(),
                        };
                        if !placed(replicas) {
                            return;
                        }
                    }
                }
                Err(err) => tracing::warn!(cause = %err, "placement watch failed; retrying"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Calls `changed` on every change of a deployment (never placements). Runs forever,
    /// restarting the watch when it ends.
    pub async fn on_change(&self, changed: impl Fn()) {
        loop {
            if let Ok(mut watch) = self.bucket.kv.watch_all().await {
                while let Some(Ok(entry)) = watch.next().await {
                    if entry.key.starts_with(DEPLOY) {
                        changed();
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

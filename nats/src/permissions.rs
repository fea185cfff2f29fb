//! Who may do what on the bus: one NATS user per role, each allowed only the subjects its
//! code uses, made from the subject builders (`Subjects`) and the storage layer's list of
//! what each group of operations needs (`store::access`). Rendered as nats-server's own
//! `authorization { users = [...] }` block with nkey users; replies go to a per-role
//! inbox prefix, so no role reads another's replies.

use bitinglip_bus_schema::{client_owner, Subjects, DEFAULT_CLIENT};

use crate::store::access;

mod config;

pub use config::{
    authorization_block, client_identities, client_seed_file, in_domain, init_credentials, is_worker_name,
    leaf_authorization_block, manage_client_identities, manage_worker_identities, seed_file, seed_for,
    worker_seed_file, write_leaf_config, User, AUTH_FILE, LEAF_AUTH_FILE, LEAF_FILE,
};

/// A kind of NATS user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NatsRole {
    /// The HTTP bridge.
    Gateway,
    /// Validates and queues tasks; answers task requests.
    TaskManager,
    /// Keeps the model registry.
    ModelManager,
    /// Keeps membership, deployments and placements; fails over dead workers' tasks.
    ClusterManager,
    /// Runs engines: its queue consumers, its events, its model statuses, its heartbeats.
    Worker,
    /// An outside program, as one client identity (`client.nk` is the identity
    /// `default`; `nats init --client NAME` makes others): submit, cancel, get and list
    /// its own tasks, follow their events, read their large answers.
    Client,
    /// Everything, for the CLI's admin commands.
    Admin,
    /// In the server's system account: reads the events of client connections that
    /// close (`$SYS.ACCOUNT.*.DISCONNECT`), and nothing else. Cluster managers use it to
    /// learn of a dead node at once.
    Events,
    /// A leaf node's connection to the cluster (an edge site's nats-server): what a
    /// worker may do, through the JetStream domain; only as a leaf node connection.
    Leaf,
}

impl NatsRole {
    /// Every role.
    pub const ALL: [NatsRole; 9] = [
        NatsRole::Gateway,
        NatsRole::TaskManager,
        NatsRole::ModelManager,
        NatsRole::ClusterManager,
        NatsRole::Worker,
        NatsRole::Client,
        NatsRole::Admin,
        NatsRole::Events,
        NatsRole::Leaf,
    ];

    /// The name: the credential file's stem and the user's description.
    pub fn as_str(self) -> &'static str {
        match self {
            NatsRole::Gateway => "gateway",
            NatsRole::TaskManager => "task-manager",
            NatsRole::ModelManager => "model-manager",
            NatsRole::ClusterManager => "cluster-manager",
            NatsRole::Worker => "worker",
            NatsRole::Client => "client",
            NatsRole::Admin => "admin",
            NatsRole::Events => "events",
            NatsRole::Leaf => "leaf",
        }
    }

    /// Parses a role's name.
    pub fn parse(name: &str) -> Option<NatsRole> {
        NatsRole::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// The NATS user of a node role.
    pub fn of(role: bitinglip_bus_schema::Role) -> Option<NatsRole> {
        use bitinglip_bus_schema::Role;
        Some(match role {
            Role::Gateway => NatsRole::Gateway,
            Role::TaskManager => NatsRole::TaskManager,
            Role::ModelManager => NatsRole::ModelManager,
            Role::ClusterManager => NatsRole::ClusterManager,
            Role::Worker => NatsRole::Worker,
            Role::Unknown => return None,
        })
    }

    /// The prefix of this role's reply subjects (`<prefix>.<id>`): the only inbox it may
    /// subscribe to. (A client identity other than `default` has its own:
    /// [`client_inbox_prefix`].)
    pub fn inbox_prefix(self) -> String {
        format!("_INBOX_{}", self.as_str().replace('-', "_"))
    }
}

/// The reply prefix of client identity `name`: `_INBOX_client` for `default` (the shared
/// `client.nk`), `_INBOX_client_<name>` for the others, so that no identity reads
/// another's replies.
pub fn client_inbox_prefix(name: &str) -> String {
    if name == DEFAULT_CLIENT {
        NatsRole::Client.inbox_prefix()
    } else {
        format!("{}_{name}", NatsRole::Client.inbox_prefix())
    }
}

/// What one user may publish and subscribe to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Subjects it may publish to.
    pub publish_allow: Vec<String>,
    /// Subjects it may never publish to (wins over the allow list).
    pub publish_deny: Vec<String>,
    /// Subjects it may subscribe to.
    pub subscribe_allow: Vec<String>,
    /// Subjects it may never subscribe to.
    pub subscribe_deny: Vec<String>,
    /// It answers requests: it may publish one reply to each request's reply subject.
    pub allow_responses: bool,
}

impl Permissions {
    fn publish(&mut self, subjects: impl IntoIterator<Item = String>) {
        for s in subjects {
            if !self.publish_allow.contains(&s) {
                self.publish_allow.push(s);
            }
        }
    }

    fn subscribe(&mut self, subjects: impl IntoIterator<Item = String>) {
        for s in subjects {
            if !self.subscribe_allow.contains(&s) {
                self.subscribe_allow.push(s);
            }
        }
    }
}

/// The subjects of a NATS service's discovery (`$SRV.PING|INFO|STATS[.<name>[.<id>]]`),
/// which every service subscribes to.
fn service_discovery() -> Vec<String> {
    ["PING", "INFO", "STATS"].iter().flat_map(|v| [format!("$SRV.{v}"), format!("$SRV.{v}.>")]).collect()
}

/// What every node does whatever its roles: find the streams and buckets (and, on a node
/// with a control role, create those missing), write its heartbeat, watch the others',
/// answer readiness and metrics.
fn node_common(s: &Subjects, p: &mut Permissions, provisions: bool) {
    // Its heartbeat answers whether it is alive.
    p.subscribe([s.all_node_alive()]);
    p.allow_responses = true;
    // A worker only finds them: a leaked worker seed cannot create a stream or bucket
    // before provisioning does.
    p.publish(if provisions { access::provision(s) } else { access::open(s) });
    p.publish(access::kv_watch(&s.nodes_bucket()));
    p.publish(access::kv_write(&s.nodes_bucket(), ">"));
    p.publish(access::queue_stats(s));
}

/// The task requests of every owner: what gateways send and task managers answer.
fn task_requests(s: &Subjects) -> Vec<String> {
    vec![
        s.all_task_submits(),
        s.task_get(),
        s.task_list(),
        s.all_owner_task_gets(),
        s.all_owner_task_lists(),
        s.all_owner_task_results(),
        s.all_task_cancels(),
    ]
}

/// Following any task: its live events and its stored ones.
fn follow_tasks(s: &Subjects, p: &mut Permissions) {
    p.subscribe([s.all_task_events()]);
    p.publish(access::stream_scan(&s.events_stream()));
    // An answer too large for one message is read from the results store.
    p.publish(access::results_read(s));
}

/// The permissions of client identity `name`: its own tasks only. Every subject it may
/// use names its owner (`client-<name>`), so the server itself keeps it from another
/// identity's or an API key's tasks, and from setting another owner. Its stored events
/// are read through consumers whose filter (in the create request's subject) is its own;
/// its large answers through the task manager (`…task.<owner>.result`), never the
/// results store itself.
pub fn client_permissions(name: &str, s: &Subjects) -> Permissions {
    let owner = client_owner(name);
    let owner = Some(owner.as_str());
    let mut p = Permissions::default();
    p.subscribe([format!("{}.>", client_inbox_prefix(name))]);
    p.publish(access::open(s));
    p.publish([
        s.task_submit(owner),
        s.owner_task_get(owner),
        s.owner_task_list(owner),
        s.owner_task_result(owner),
        s.owner_task_cancels(owner),
    ]);
    p.subscribe([s.owner_task_events(owner)]);
    p.publish(access::stream_scan_filtered(&s.events_stream(), &s.owner_task_events(owner)));
    deny_destructive(NatsRole::Client, s, &mut p);
    p
}

/// The permissions of `role` for a deployment whose subjects are `s`.
pub fn permissions(role: NatsRole, s: &Subjects) -> Permissions {
    let mut p = Permissions::default();
    p.subscribe([format!("{}.>", role.inbox_prefix())]);
    let tasks = s.tasks_bucket();
    let models = s.models_bucket();
    let deployments = s.deployments_bucket();
    let keys = s.keys_bucket();
    match role {
        NatsRole::Gateway => {
            node_common(s, &mut p, true);
            // Every owner's task requests (it serves every API key).
            p.publish(task_requests(s));
            p.publish([
                s.model_list(),
                s.model_search(),
                s.model_pull(),
                s.model_status(),
                s.model_load(),
                s.model_unload(),
                s.model_delete(),
                s.deployment_set(),
                s.deployment_delete(),
                s.deployment_list(),
                s.cluster_status(),
            ]);
            follow_tasks(s, &mut p);
            // Pulls' progress, for the dashboard's progress bar.
            p.subscribe([s.all_model_progress()]);
            // API keys: the watch every gateway keeps, and the admin API's writes.
            p.publish(access::kv_watch(&keys));
            p.publish(access::kv_write(&keys, ">"));
            // Stored responses (the Responses API), written and read by gateways only.
            p.publish(access::kv_watch(&s.responses_bucket()));
            p.publish(access::kv_write(&s.responses_bucket(), ">"));
            // The Files and Batch APIs: gateways store files and drive batches.
            p.publish(access::kv_watch(&s.batches_bucket()));
            p.publish(access::kv_write(&s.batches_bucket(), ">"));
            p.publish(access::files_write(s));
            // Limits and usage.
            p.publish([s.all_rate_counters()]);
            p.publish(access::counters_read(&s.rates_stream()));
            p.publish(access::counters_read(&s.usage_stream()));
            // Counts finished tasks' usage (workers ask; the record says how much).
            p.publish(s.all_usage_counters());
            p.publish(access::stream_scan(&s.usage_stream()));
        }
        NatsRole::TaskManager => {
            node_common(s, &mut p, true);
            p.allow_responses = true;
            // What it answers: every owner's task requests, and the workers'.
            p.subscribe(task_requests(s));
            p.subscribe([s.task_usage(), s.task_consumers()]);
            p.subscribe(service_discovery());
            // Makes the queues' consumers for the workers that ask.
            p.publish(access::queue_consumers(s));
            // Queues accepted tasks (and wakes the fetchers of their lanes); fails a
            // cancelled queued task with an event.
            p.publish([s.all_queues(), s.all_queue_wakes(), s.all_task_events()]);
            // Hands out the owner's large answers (`…task.<owner>.result`).
            p.publish(access::results_read(s));
            // Counts client identities' submits against their limits.
            p.publish([s.all_rate_counters()]);
            p.publish(access::counters_read(&s.rates_stream()));
            p.publish(access::counters_read(&s.usage_stream()));
            // Counts finished tasks' usage (workers ask; the record says how much).
            p.publish(s.all_usage_counters());
            p.publish(access::kv_watch(&tasks));
            p.publish(access::kv_write(&tasks, ">"));
            p.publish(access::kv_watch(&deployments));
            p.publish(access::kv_write(&deployments, "deploy.>"));
            p.publish(access::kv_watch(&models));
        }
        NatsRole::ModelManager => {
            node_common(s, &mut p, true);
            p.allow_responses = true;
            p.subscribe([
                s.model_register(),
                s.model_search(),
                s.model_status(),
                s.model_load(),
                s.model_unload(),
                s.model_delete(),
                s.model_list(),
            ]);
            p.subscribe(service_discovery());
            p.publish(access::kv_watch(&models));
            p.publish(access::kv_write(&models, ">"));
            p.publish(access::kv_watch(&deployments));
            p.publish(access::kv_write(&deployments, "deploy.>"));
        }
        NatsRole::ClusterManager => {
            node_common(s, &mut p, true);
            p.allow_responses = true;
            p.subscribe([s.cluster_status(), s.deployment_set(), s.deployment_delete(), s.deployment_list()]);
            p.subscribe([s.max_deliveries_advisory()]);
            p.subscribe(service_discovery());
            // Hands a dead worker's delivery back (after asking whether it is alive);
            // fails and removes a poisoned task.
            p.publish([access::queue_acks(s), s.all_task_events(), s.all_node_alive()]);
            // Has the dead worker's model's fetchers scan their lanes for what it handed on.
            p.publish([s.all_queue_wakes()]);
            p.publish(access::queue_remove(s));
            p.publish(access::kv_watch(&s.leases_bucket()));
            p.publish(access::kv_write(&s.leases_bucket(), ">"));
            p.publish(access::kv_watch(&deployments));
            p.publish(access::kv_write(&deployments, ">"));
            p.publish(access::kv_watch(&models));
            p.publish(access::kv_watch(&tasks));
            p.publish(access::kv_write(&tasks, ">"));
            // Only it may bring a stream's config up to date.
            p.publish(access::update_streams(s));
        }
        NatsRole::Worker => {
            node_common(s, &mut p, false);
            // The puller answers pull requests.
            p.allow_responses = true;
            p.subscribe([s.all_task_cancels(), s.model_pull()]);
            // Wakes up when a task is pinned to it (cache-affinity routing).
            p.subscribe([s.all_pinned_queues()]);
            // Wakes up when a task joins one of its model's tenant lanes.
            p.subscribe([s.all_queue_wakes()]);
            p.subscribe(service_discovery());
            p.publish([s.all_task_events(), s.model_register(), s.task_usage(), s.task_consumers()]);
            // Releases a pinned task it has no room for to its tenant's lane (and requeues
            // a delivery it has no slot for), waking the model's fetchers.
            p.publish([s.shared_queues(), s.all_tenant_queues(), s.all_queue_wakes()]);
            p.publish([s.all_model_progress()]);
            p.publish(access::queue_take(s));
            p.publish(access::results_write(s));
            p.publish(access::stream_scan(&s.events_stream()));
            p.publish(access::kv_read(&tasks));
            p.publish(access::kv_write(&tasks, ">"));
            // Its model statuses (`<model>.<node>`), never a registry entry.
            p.publish(access::kv_read(&models));
            p.publish(access::kv_write(&models, "*.*"));
            // Its placement.
            p.publish(access::kv_watch(&deployments));
            // No counter: a task manager counts the usage of the tasks it finishes.
        }
        NatsRole::Client => return client_permissions(DEFAULT_CLIENT, s),
        NatsRole::Leaf => {
            // A worker's, plus the replies to those whose requests workers answer (a leaf
            // connection knows no `allow_responses`): the cluster managers' (alive), the
            // gateways' (pulls) and the admin's (service discovery).
            let mut p = permissions(NatsRole::Worker, s);
            p.allow_responses = false;
            for role in [NatsRole::ClusterManager, NatsRole::Gateway, NatsRole::Admin] {
                p.publish([format!("{}.>", role.inbox_prefix())]);
            }
            return p;
        }
        NatsRole::Events => {
            // A user of the system account: no inbox, no publishing at all.
            p.subscribe_allow = vec![s.client_disconnects()];
            p.publish_deny = vec![">".to_string()];
            return p;
        }
        NatsRole::Admin => {
            p.publish([">".to_string()]);
            p.subscribe([">".to_string()]);
            p.allow_responses = true;
            return p;
        }
    }
    deny_destructive(role, s, &mut p);
    p
}

/// Nothing but the admin may destroy, forge the server's advisories, or write what it
/// does not own.
fn deny_destructive(role: NatsRole, s: &Subjects, p: &mut Permissions) {
    let keys = s.keys_bucket();
    // The gateway deletes the Files API's files, which purges their chunks (and only
    // theirs: the purge names the object's subject).
    let files_purge = access::files_purge(s);
    p.publish_deny.extend(
        access::destructive(s).into_iter().filter(|d| !(matches!(role, NatsRole::Gateway) && *d == files_purge)),
    );
    p.publish_deny.push("$JS.EVENT.>".into());
    p.publish_deny.push("$SYS.>".into());
    if !matches!(role, NatsRole::Gateway) {
        p.publish_deny.extend(access::kv_write(&keys, ">"));
    }
    if matches!(role, NatsRole::Worker | NatsRole::Client) {
        p.publish_deny.extend([s.deployment_set(), s.deployment_delete(), s.model_delete(), s.model_unload()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_have_their_names_and_inboxes() {
        for role in NatsRole::ALL {
            assert_eq!(NatsRole::parse(role.as_str()), Some(role));
            assert!(!role.inbox_prefix().contains('-'));
        }
    }

    #[test]
    fn a_worker_may_take_tasks_but_never_destroy() {
        let s = Subjects::default();
        let w = permissions(NatsRole::Worker, &s);
        assert!(w.publish_allow.contains(&"$JS.API.CONSUMER.MSG.NEXT.BITINGLIP_TASKS.>".to_string()));
        assert!(w.publish_allow.contains(&"$JS.ACK.BITINGLIP_TASKS.>".to_string()));
        for denied in [
            "$JS.API.STREAM.DELETE.BITINGLIP_TASKS",
            "$JS.API.STREAM.PURGE.BITINGLIP_TASKS",
            "$JS.API.CONSUMER.DELETE.BITINGLIP_TASKS.>",
            "$JS.EVENT.>",
            "bitinglip.v1.deployment.set",
            "bitinglip.v1.model.delete",
            "$KV.bitinglip_keys.>",
        ] {
            assert!(w.publish_deny.contains(&denied.to_string()), "{denied}");
        }
        assert!(!w.publish_allow.iter().any(|s| s.starts_with("$JS.API.STREAM.UPDATE")));
        assert!(!w.subscribe_allow.contains(&"_INBOX.>".to_string()));
    }

    #[test]
    fn a_client_submits_and_follows_only() {
        let s = Subjects::default();
        let c = permissions(NatsRole::Client, &s);
        assert_eq!(c, client_permissions("default", &s));
        let c = client_permissions("app", &s);
        assert!(c.publish_allow.contains(&"bitinglip.v1.task.client-app.submit".to_string()));
        assert!(c.publish_allow.contains(&"bitinglip.v1.task.client-app.*.cancel".to_string()));
        assert_eq!(c.subscribe_allow, ["_INBOX_client_app.>", "bitinglip.v1.task.client-app.*.events"]);
        // Never another owner's subjects, the trusted get and list, or a consumer of every event.
        for other in ["bitinglip.v1.task.*.submit", "bitinglip.v1.task.get", "bitinglip.v1.task.list"] {
            assert!(!c.publish_allow.contains(&other.to_string()), "{other}");
        }
        assert!(c.publish_allow.iter().all(|s| !s.starts_with("$JS.API.CONSUMER.CREATE.BITINGLIP_EVENTS")
            || s.ends_with(".bitinglip.v1.task.client-app.*.events")));
        // The results store's stream info at most: no reads of its messages.
        assert!(!c.publish_allow.iter().any(|s| s.contains("OBJ_bitinglip_results") && !s.contains("STREAM.INFO")));
        assert!(!c.allow_responses);
        assert!(!c.publish_allow.iter().any(|s| s.starts_with("$KV.")));
        assert!(!c.publish_allow.iter().any(|s| s.contains(".model.") || s.contains(".deployment.")));
    }
}

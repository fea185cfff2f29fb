//! Who may do what on the bus: one NATS user per role, each allowed only the subjects its
//! code uses, made from the subject builders (`Subjects`) and the storage layer's list of
//! what each group of operations needs (`store::access`). Rendered as nats-server's own
//! `authorization { users = [...] }` block with nkey users; replies go to a per-role
//! inbox prefix, so no role reads another's replies.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use bitinglip_bus_schema::Subjects;

use crate::store::access;

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
    /// An outside program: submit, cancel, get and list tasks, follow their events.
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
    /// subscribe to.
    pub fn inbox_prefix(self) -> String {
        format!("_INBOX_{}", self.as_str().replace('-', "_"))
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

/// What every node does whatever its roles: find or create the streams and buckets,
/// write its heartbeat, watch the others', answer readiness and metrics.
fn node_common(s: &Subjects, p: &mut Permissions) {
    // Its heartbeat answers whether it is alive.
    p.subscribe([s.all_node_alive()]);
    p.allow_responses = true;
    p.publish(access::provision(s));
    p.publish(access::kv_watch(&s.nodes_bucket()));
    p.publish(access::kv_write(&s.nodes_bucket(), ">"));
    p.publish(access::queue_stats(s));
}

/// Following a task: its live events and its stored ones.
fn follow_tasks(s: &Subjects, p: &mut Permissions) {
    p.subscribe([s.all_task_events()]);
    p.publish(access::stream_scan(&s.events_stream()));
    // An answer too large for one message is read from the results store.
    p.publish(access::results_read(s));
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
            node_common(s, &mut p);
            p.publish([
                s.task_submit(),
                s.task_get(),
                s.task_list(),
                s.all_task_cancels(),
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
            p.publish(access::stream_scan(&s.usage_stream()));
        }
        NatsRole::TaskManager => {
            node_common(s, &mut p);
            p.allow_responses = true;
            p.subscribe([s.task_submit(), s.task_get(), s.task_list(), s.all_task_cancels()]);
            p.subscribe(service_discovery());
            // Queues accepted tasks; fails a cancelled queued task with an event.
            p.publish([s.all_queues(), s.all_task_events()]);
            p.publish(access::kv_watch(&tasks));
            p.publish(access::kv_write(&tasks, ">"));
            p.publish(access::kv_watch(&deployments));
            p.publish(access::kv_write(&deployments, "deploy.>"));
            p.publish(access::kv_watch(&models));
        }
        NatsRole::ModelManager => {
            node_common(s, &mut p);
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
            node_common(s, &mut p);
            p.allow_responses = true;
            p.subscribe([s.cluster_status(), s.deployment_set(), s.deployment_delete(), s.deployment_list()]);
            p.subscribe([s.max_deliveries_advisory()]);
            p.subscribe(service_discovery());
            // Hands a dead worker's delivery back (after asking whether it is alive);
            // fails and removes a poisoned task.
            p.publish([access::queue_acks(s), s.all_task_events(), s.all_node_alive()]);
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
            node_common(s, &mut p);
            // The puller answers pull requests.
            p.allow_responses = true;
            p.subscribe([s.all_task_cancels(), s.model_pull()]);
            p.subscribe(service_discovery());
            p.publish([s.all_task_events(), s.model_register()]);
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
            // Usage and token counters of the tasks it finishes.
            p.publish(s.all_usage_counters());
            p.publish([format!("{}.rate.*.*.tokens", prefix(s))]);
        }
        NatsRole::Client => {
            p.publish(access::open(s));
            p.publish([s.task_submit(), s.task_get(), s.task_list(), s.all_task_cancels()]);
            follow_tasks(s, &mut p);
        }
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
    // Nothing but the admin may destroy, forge the server's advisories, or write what it
    // does not own.
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
    p
}

/// `<root>.v1`, the prefix of every subject.
fn prefix(s: &Subjects) -> String {
    s.task_submit().trim_end_matches(".task.submit").to_string()
}

fn quoted(list: &[String]) -> String {
    let items: Vec<String> = list.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[{}]", items.join(", "))
}

/// A subject as a client in a leaf node's site sends it to JetStream in `domain` (pure):
/// the API and KV subjects get the domain's prefix (the hub maps them back); the rest
/// (acks, flow control, object chunks, plain subjects) are as they are.
pub fn in_domain(subject: &str, domain: Option<&str>) -> String {
    let Some(d) = domain else { return subject.to_string() };
    if let Some(rest) = subject.strip_prefix("$JS.API.") {
        format!("$JS.{d}.API.{rest}")
    } else if subject.starts_with("$KV.") {
        format!("$JS.{d}.API.{subject}")
    } else {
        subject.to_string()
    }
}

/// One nkey user of a server's config with its permissions (publish subjects as sent in
/// `domain`), allowed only `connection_type` connections.
fn user_entry(
    out: &mut String,
    role: NatsRole,
    public_key: &str,
    s: &Subjects,
    domain: Option<&str>,
    connection_type: &str,
) {
    let mut p = permissions(role, s);
    p.publish_allow = p.publish_allow.iter().map(|x| in_domain(x, domain)).collect();
    p.publish_deny = p.publish_deny.iter().map(|x| in_domain(x, domain)).collect();
    let _ = writeln!(out, "    # {}", role.as_str());
    let _ = writeln!(out, "    {{\n      nkey: \"{public_key}\"\n      allowed_connection_types: [\"{connection_type}\"]\n      permissions: {{");
    if p.publish_allow.is_empty() {
        let _ = writeln!(out, "        publish: {{ deny: {} }}", quoted(&p.publish_deny));
    } else {
        let _ = writeln!(out, "        publish: {{ allow: {}", quoted(&p.publish_allow));
        if !p.publish_deny.is_empty() {
            let _ = writeln!(out, "          deny: {}", quoted(&p.publish_deny));
        }
        let _ = writeln!(out, "        }}");
    }
    let _ = writeln!(out, "        subscribe: {{ allow: {} }}", quoted(&p.subscribe_allow));
    if p.allow_responses {
        let _ = writeln!(out, "        allow_responses: true");
    }
    let _ = writeln!(out, "      }}\n    }}");
}

/// nats-server's config for these users (role, nkey public key), ready to `include` in a
/// server's config: an `authorization` block with the users of the application (the
/// global account, each allowed only client connections), the system account `$SYS`
/// with the `events` user, and, when the cluster's JetStream has a `domain`, the `leaf`
/// user, allowed only leaf node connections.
pub fn authorization_block(users: &[(NatsRole, String)], s: &Subjects, domain: Option<&str>) -> String {
    let mut out =
        String::from("# BitingLip's NATS users, one per role (`bitinglip nats init`).\nauthorization {\n  users = [\n");
    for (role, public_key) in users.iter().filter(|(r, _)| !matches!(r, NatsRole::Events | NatsRole::Leaf)) {
        user_entry(&mut out, *role, public_key, s, None, "STANDARD");
    }
    if let (Some(d), Some((_, public_key))) = (domain, users.iter().find(|(r, _)| *r == NatsRole::Leaf)) {
        user_entry(&mut out, NatsRole::Leaf, public_key, s, Some(d), "LEAFNODE");
    }
    out.push_str("  ]\n}\n");
    let events: Vec<_> = users.iter().filter(|(r, _)| *r == NatsRole::Events).collect();
    if !events.is_empty() {
        out.push_str("# The server's own account: its events of client connections (cluster managers read\n");
        out.push_str("# which node's connection closed).\naccounts {\n  \"$SYS\" {\n  users = [\n");
        for (role, public_key) in events {
            user_entry(&mut out, *role, public_key, s, None, "STANDARD");
        }
        out.push_str("  ]\n  }\n}\nsystem_account: \"$SYS\"\n");
    }
    out
}

/// The local users of a leaf node's nats-server at an edge site: the `worker` user, its
/// JetStream subjects sent in `domain`.
pub fn leaf_authorization_block(worker_public_key: &str, s: &Subjects, domain: &str) -> String {
    let mut out = String::from(
        "# The users of an edge site's leaf node (`bitinglip nats init --jetstream-domain`).\nauthorization {\n  users = [\n",
    );
    user_entry(&mut out, NatsRole::Worker, worker_public_key, s, Some(domain), "STANDARD");
    out.push_str("  ]\n}\n");
    out
}

/// The file an edge site's leaf node `include`s: its local users.
pub const LEAF_AUTH_FILE: &str = "leaf-auth.conf";
/// An edge site's leaf node config: the remote (the cluster, as the `leaf` user) and
/// its local users. Holds the `leaf` seed.
pub const LEAF_FILE: &str = "leaf.conf";

/// Writes `dir/leaf.conf` (mode 0600: it holds the `leaf` seed) for a leaf node that
/// connects to the cluster's leaf node listeners `hubs` (`nats-leaf://host:7422`).
pub fn write_leaf_config(dir: &Path, hubs: &[String]) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let seed = std::fs::read_to_string(seed_file(dir, NatsRole::Leaf))?;
    let urls: Vec<String> = hubs.iter().map(|u| format!("\"{u}\"")).collect();
    let text = format!(
        "# An edge site's leaf node: the cluster as the `leaf` user, and the site's own users.\n\
         leafnodes {{\n  remotes: [\n    {{ urls: [{}], nkey: \"{}\" }}\n  ]\n}}\ninclude \"{LEAF_AUTH_FILE}\"\n",
        urls.join(", "),
        seed.trim()
    );
    let path = dir.join(LEAF_FILE);
    let _ = std::fs::remove_file(&path);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
    std::io::Write::write_all(&mut file, text.as_bytes())?;
    Ok(path)
}

/// The file holding `role`'s nkey seed in a credentials folder.
pub fn seed_file(dir: &Path, role: NatsRole) -> PathBuf {
    dir.join(format!("{}.nk", role.as_str()))
}

/// The file `include`d by a server's config.
pub const AUTH_FILE: &str = "auth.conf";

/// Makes a credentials folder: one nkey seed per role (`<role>.nk`, mode 0600) and the
/// server's `auth.conf` with their public keys; with the cluster's JetStream `domain`,
/// also `leaf-auth.conf` for edge sites' leaf nodes. An existing seed is kept (never
/// overwritten) and the files are written again from the seeds found; returns the roles
/// whose seeds it created.
pub fn init_credentials(dir: &Path, s: &Subjects, domain: Option<&str>) -> std::io::Result<Vec<NatsRole>> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let mut created = Vec::new();
    let mut users = Vec::new();
    for role in NatsRole::ALL {
        let path = seed_file(dir, role);
        let pair = match std::fs::read_to_string(&path) {
            Ok(seed) => nkeys::KeyPair::from_seed(seed.trim()).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: not an nkey seed: {e}", path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let pair = nkeys::KeyPair::new_user();
                let seed = pair.seed().map_err(|e| std::io::Error::other(e.to_string()))?;
                // create_new: two starts at once never overwrite each other's seed.
                let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
                std::io::Write::write_all(&mut file, format!("{seed}\n").as_bytes())?;
                created.push(role);
                pair
            }
            Err(e) => return Err(e),
        };
        users.push((role, pair.public_key()));
    }
    let block = authorization_block(&users, s, domain);
    let tmp = dir.join(format!("{AUTH_FILE}.tmp"));
    std::fs::write(&tmp, block)?;
    std::fs::rename(&tmp, dir.join(AUTH_FILE))?;
    if let (Some(d), Some((_, worker))) = (domain, users.iter().find(|(r, _)| *r == NatsRole::Worker)) {
        std::fs::write(dir.join(LEAF_AUTH_FILE), leaf_authorization_block(worker, s, d))?;
    }
    Ok(created)
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
        assert!(c.publish_allow.contains(&"bitinglip.v1.task.submit".to_string()));
        assert!(c.subscribe_allow.contains(&"bitinglip.v1.task.*.events".to_string()));
        assert!(!c.allow_responses);
        assert!(!c.publish_allow.iter().any(|s| s.starts_with("$KV.")));
        assert!(!c.publish_allow.iter().any(|s| s.contains(".model.") || s.contains(".deployment.")));
    }

    #[test]
    fn the_block_names_every_user() {
        let s = Subjects::default();
        let users: Vec<_> = NatsRole::ALL.iter().map(|r| (*r, format!("U{}", r.as_str().to_uppercase()))).collect();
        let block = authorization_block(&users, &s, None);
        for (role, key) in users.iter().filter(|(r, _)| *r != NatsRole::Leaf) {
            assert!(block.contains(&format!("nkey: \"{key}\"")), "{role:?}");
        }
        // Without a JetStream domain there is no leaf user (a leaf could not reach JetStream).
        assert!(!block.contains("ULEAF"));
        assert!(!block.contains("LEAFNODE"));
        // Every node role answers (at least whether it is alive); clients do not.
        assert_eq!(block.matches("allow_responses: true").count(), 6);
        // The events user is in the system account, and may only read disconnects.
        let (app, system) = block.split_once("accounts {").expect("a system account");
        assert!(!app.contains("UEVENTS") && system.contains("UEVENTS"));
        assert!(system.contains("subscribe: { allow: [\"$SYS.ACCOUNT.*.DISCONNECT\"] }"), "{system}");
        assert!(system.contains("publish: { deny: [\">\"] }"), "{system}");
        assert!(block.trim_end().ends_with("system_account: \"$SYS\""));
    }

    #[test]
    fn subjects_go_to_jetstream_through_the_domain() {
        assert_eq!(in_domain("$JS.API.STREAM.INFO.T", Some("hub")), "$JS.hub.API.STREAM.INFO.T");
        assert_eq!(in_domain("$KV.b.>", Some("hub")), "$JS.hub.API.$KV.b.>");
        assert_eq!(in_domain("$JS.ACK.T.>", Some("hub")), "$JS.ACK.T.>");
        assert_eq!(in_domain("bitinglip.v1.task.*.events", Some("hub")), "bitinglip.v1.task.*.events");
        assert_eq!(in_domain("$JS.API.INFO", None), "$JS.API.INFO");
    }

    #[test]
    fn the_leaf_user_is_a_worker_through_the_domain_on_leaf_connections_only() {
        let s = Subjects::default();
        let users: Vec<_> = NatsRole::ALL.iter().map(|r| (*r, format!("U{}", r.as_str().to_uppercase()))).collect();
        let block = authorization_block(&users, &s, Some("hub"));
        let leaf = &block[block.find("# leaf").expect("a leaf user")..];
        // The last user of the application's block.
        let leaf = &leaf[..leaf.find("  ]\n}").expect("the end of the users")];
        assert!(leaf.contains("allowed_connection_types: [\"LEAFNODE\"]"), "{leaf}");
        assert!(leaf.contains("\"$JS.hub.API.CONSUMER.MSG.NEXT.BITINGLIP_TASKS.>\""), "{leaf}");
        assert!(
            leaf.contains("\"$JS.hub.API.STREAM.DELETE.BITINGLIP_TASKS\""),
            "the deny list, in the domain too: {leaf}"
        );
        assert!(leaf.contains("\"_INBOX_cluster_manager.>\""), "{leaf}");
        assert!(!leaf.contains("allow_responses"), "{leaf}");
        // Every other user may only connect as a client.
        assert_eq!(block.matches("\"STANDARD\"").count(), NatsRole::ALL.len() - 1);
    }

    #[test]
    fn credentials_are_made_once_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let s = Subjects::default();
        assert_eq!(init_credentials(dir.path(), &s, None).unwrap().len(), NatsRole::ALL.len());
        let worker = std::fs::read_to_string(seed_file(dir.path(), NatsRole::Worker)).unwrap();
        assert!(worker.starts_with("SU"));
        let mode = std::fs::metadata(seed_file(dir.path(), NatsRole::Worker)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(init_credentials(dir.path(), &s, None).unwrap().is_empty());
        assert_eq!(std::fs::read_to_string(seed_file(dir.path(), NatsRole::Worker)).unwrap(), worker);
        let public = nkeys::KeyPair::from_seed(worker.trim()).unwrap().public_key();
        assert!(std::fs::read_to_string(dir.path().join(AUTH_FILE)).unwrap().contains(&public));
    }
}

//! The server's side of the roles' permissions: nats-server's `authorization` block with
//! one nkey user per role, the leaf node's users and config, the subjects as a leaf
//! site's clients send them (`in_domain`), and the credentials folder `nats init` writes
//! (a seed file per role, `auth.conf`).

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use bitinglip_bus_schema::{client_name_problem, Subjects, DEFAULT_CLIENT};

use super::{client_permissions, permissions, NatsRole, Permissions};

/// One nkey user of the server's config: a role, and for a client identity its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Its role.
    pub role: NatsRole,
    /// A client identity's name (`None` for every other role, and for `client.nk`, the
    /// identity `default`).
    pub client: Option<String>,
    /// Its nkey public key.
    pub public_key: String,
}

impl User {
    /// A user of `role` (a client: the identity `default`).
    pub fn of(role: NatsRole, public_key: impl Into<String>) -> Self {
        Self { role, client: None, public_key: public_key.into() }
    }

    fn permissions(&self, s: &Subjects) -> Permissions {
        match (self.role, &self.client) {
            (NatsRole::Client, Some(name)) => client_permissions(name, s),
            (role, _) => permissions(role, s),
        }
    }

    fn label(&self) -> String {
        match &self.client {
            Some(name) => format!("client {name}"),
            None => self.role.as_str().to_string(),
        }
    }
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
fn user_entry(out: &mut String, user: &User, s: &Subjects, domain: Option<&str>, connection_type: &str) {
    let public_key = &user.public_key;
    let mut p = user.permissions(s);
    p.publish_allow = p.publish_allow.iter().map(|x| in_domain(x, domain)).collect();
    p.publish_deny = p.publish_deny.iter().map(|x| in_domain(x, domain)).collect();
    let _ = writeln!(out, "    # {}", user.label());
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
pub fn authorization_block(users: &[User], s: &Subjects, domain: Option<&str>) -> String {
    let mut out =
        String::from("# BitingLip's NATS users, one per role (`bitinglip nats init`).\nauthorization {\n  users = [\n");
    for user in users.iter().filter(|u| !matches!(u.role, NatsRole::Events | NatsRole::Leaf)) {
        user_entry(&mut out, user, s, None, "STANDARD");
    }
    if let (Some(d), Some(leaf)) = (domain, users.iter().find(|u| u.role == NatsRole::Leaf)) {
        user_entry(&mut out, leaf, s, Some(d), "LEAFNODE");
    }
    out.push_str("  ]\n}\n");
    let events: Vec<_> = users.iter().filter(|u| u.role == NatsRole::Events).collect();
    if !events.is_empty() {
        out.push_str("# The server's own account: its events of client connections (cluster managers read\n");
        out.push_str("# which node's connection closed).\naccounts {\n  \"$SYS\" {\n  users = [\n");
        for user in events {
            user_entry(&mut out, user, s, None, "STANDARD");
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
    user_entry(&mut out, &User::of(NatsRole::Worker, worker_public_key), s, Some(domain), "STANDARD");
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

/// The seed file of worker node `name`'s own identity (`worker-<name>.nk`): a `worker`
/// user of its own, revocable alone.
pub fn worker_seed_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("worker-{name}.nk"))
}

/// The seed file of client identity `name` (`client-<name>.nk`); the identity
/// `default` is `client.nk`.
pub fn client_seed_file(dir: &Path, name: &str) -> PathBuf {
    if name == DEFAULT_CLIENT {
        seed_file(dir, NatsRole::Client)
    } else {
        dir.join(format!("client-{name}.nk"))
    }
}

/// Makes a seed for each client identity of `add` that has none (mode 0600, never
/// overwritten) and removes those of `revoke`; returns the identities created. Run
/// [`init_credentials`] after, so that `auth.conf` lists the identities left.
pub fn manage_client_identities(dir: &Path, add: &[String], revoke: &[String]) -> std::io::Result<Vec<String>> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    for name in add.iter().chain(revoke) {
        if let Some(problem) = client_name_problem(name) {
            return Err(invalid(problem));
        }
        if name == DEFAULT_CLIENT {
            return Err(invalid(format!("client identity {name:?} is the shared client.nk; pick another name")));
        }
    }
    let paths = |names: &[String]| names.iter().map(|n| (n.clone(), client_seed_file(dir, n))).collect::<Vec<_>>();
    manage_seeds(dir, &paths(add), &paths(revoke))
}

/// The client identities whose seeds are in `dir` (`client-<name>.nk`), by name.
pub fn client_identities(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    identities(dir, "client-", |n| client_name_problem(n).is_none() && n != DEFAULT_CLIENT)
}

/// Makes the seeds of `add` that are missing and removes those of `revoke`.
fn manage_seeds(dir: &Path, add: &[(String, PathBuf)], revoke: &[(String, PathBuf)]) -> std::io::Result<Vec<String>> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    let mut created = Vec::new();
    for (name, path) in add {
        if path.exists() {
            continue;
        }
        let pair = nkeys::KeyPair::new_user();
        let seed = pair.seed().map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
        std::io::Write::write_all(&mut file, format!("{seed}\n").as_bytes())?;
        created.push(name.clone());
    }
    for (_, path) in revoke {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(created)
}

/// The identities whose seeds are `<prefix><name>.nk` in `dir`, by name.
fn identities(dir: &Path, prefix: &str, valid: impl Fn(&str) -> bool) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if let Some(id) = name.strip_prefix(prefix).and_then(|n| n.strip_suffix(".nk")) {
            if valid(id) {
                found.push((id.to_string(), path.clone()));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Whether `name` can name a worker identity: a node id (letters, digits, `-`, `_`; at
/// most 64).
pub fn is_worker_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The seed `role` connects with from folder `dir` on node `node_id`: a worker node's own
/// identity (`worker-<node id>.nk`) when there is one, else the role's (`<role>.nk`).
pub fn seed_for(dir: &Path, role: NatsRole, node_id: &str) -> PathBuf {
    if role == NatsRole::Worker && is_worker_name(node_id) {
        let own = worker_seed_file(dir, node_id);
        if own.exists() {
            return own;
        }
    }
    seed_file(dir, role)
}

/// Makes a seed for each worker identity of `add` that has none (mode 0600, never
/// overwritten) and removes those of `revoke`; returns the identities created. Run
/// [`init_credentials`] after, so that `auth.conf` lists the identities left.
pub fn manage_worker_identities(dir: &Path, add: &[String], revoke: &[String]) -> std::io::Result<Vec<String>> {
    let bad = add.iter().chain(revoke).find(|n| !is_worker_name(n));
    if let Some(name) = bad {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("worker identity {name:?}: use 1 to 64 letters, digits, '-' and '_' (the node's id)"),
        ));
    }
    let paths = |names: &[String]| names.iter().map(|n| (n.clone(), worker_seed_file(dir, n))).collect::<Vec<_>>();
    manage_seeds(dir, &paths(add), &paths(revoke))
}

/// The worker identities whose seeds are in `dir` (`worker-<name>.nk`), by name.
fn worker_identities(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    identities(dir, "worker-", is_worker_name)
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
        users.push(User::of(role, pair.public_key()));
    }
    // Worker nodes' own identities: `worker` users each, revoked by removing the seed.
    let public_key = |name: &str, path: &Path| -> std::io::Result<String> {
        let seed = std::fs::read_to_string(path)?;
        let pair = nkeys::KeyPair::from_seed(seed.trim()).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: not an nkey seed ({name}): {e}", path.display()),
            )
        })?;
        Ok(pair.public_key())
    };
    for (name, path) in worker_identities(dir)? {
        users.push(User::of(NatsRole::Worker, public_key(&name, &path)?));
    }
    // Client applications' own identities, each held to its own tasks.
    for (name, path) in client_identities(dir)? {
        let key = public_key(&name, &path)?;
        users.push(User { role: NatsRole::Client, client: Some(name), public_key: key });
    }
    let block = authorization_block(&users, s, domain);
    let tmp = dir.join(format!("{AUTH_FILE}.tmp"));
    std::fs::write(&tmp, block)?;
    std::fs::rename(&tmp, dir.join(AUTH_FILE))?;
    if let (Some(d), Some(worker)) = (domain, users.iter().find(|u| u.role == NatsRole::Worker)) {
        std::fs::write(dir.join(LEAF_AUTH_FILE), leaf_authorization_block(&worker.public_key, s, d))?;
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_names_every_user() {
        let s = Subjects::default();
        let users: Vec<_> =
            NatsRole::ALL.iter().map(|r| User::of(*r, format!("U{}", r.as_str().to_uppercase()))).collect();
        let block = authorization_block(&users, &s, None);
        for user in users.iter().filter(|u| u.role != NatsRole::Leaf) {
            assert!(block.contains(&format!("nkey: \"{}\"", user.public_key)), "{user:?}");
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
        let users: Vec<_> =
            NatsRole::ALL.iter().map(|r| User::of(*r, format!("U{}", r.as_str().to_uppercase()))).collect();
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
    fn worker_identities_are_node_ids_listed_in_the_block_and_revoked_alone() {
        let dir = tempfile::tempdir().unwrap();
        let s = Subjects::default();
        assert!(manage_worker_identities(dir.path(), &["../x".to_string()], &[]).is_err());
        let names = vec!["box-a".to_string(), "box-b".to_string()];
        assert_eq!(manage_worker_identities(dir.path(), &names, &[]).unwrap(), names);
        init_credentials(dir.path(), &s, None).unwrap();
        let key = |name: &str| {
            let seed = std::fs::read_to_string(worker_seed_file(dir.path(), name)).unwrap();
            nkeys::KeyPair::from_seed(seed.trim()).unwrap().public_key()
        };
        let (a, b) = (key("box-a"), key("box-b"));
        let block = std::fs::read_to_string(dir.path().join(AUTH_FILE)).unwrap();
        assert!(block.contains(&a) && block.contains(&b));
        assert_eq!(seed_for(dir.path(), NatsRole::Worker, "box-a"), worker_seed_file(dir.path(), "box-a"));
        assert_eq!(seed_for(dir.path(), NatsRole::Worker, "box-c"), seed_file(dir.path(), NatsRole::Worker));
        manage_worker_identities(dir.path(), &[], &["box-b".to_string()]).unwrap();
        init_credentials(dir.path(), &s, None).unwrap();
        let block = std::fs::read_to_string(dir.path().join(AUTH_FILE)).unwrap();
        assert!(block.contains(&a) && !block.contains(&b), "box-b revoked, box-a kept");
    }

    #[test]
    fn client_identities_each_get_a_user_held_to_their_own_tasks_and_are_revoked_alone() {
        let dir = tempfile::tempdir().unwrap();
        let s = Subjects::default();
        for bad in ["default", "a-b", "../x", ""] {
            assert!(manage_client_identities(dir.path(), &[bad.to_string()], &[]).is_err(), "{bad}");
        }
        let names = vec!["billing".to_string(), "search".to_string()];
        assert_eq!(manage_client_identities(dir.path(), &names, &[]).unwrap(), names);
        init_credentials(dir.path(), &s, None).unwrap();
        let key = |name: &str| {
            let seed = std::fs::read_to_string(client_seed_file(dir.path(), name)).unwrap();
            nkeys::KeyPair::from_seed(seed.trim()).unwrap().public_key()
        };
        let block = std::fs::read_to_string(dir.path().join(AUTH_FILE)).unwrap();
        let entry = |key: &str| {
            let at = block.find(key).unwrap();
            block[at..at + block[at..].find("\n    }").unwrap()].to_string()
        };
        let billing = entry(&key("billing"));
        assert!(billing.contains("\"bitinglip.v1.task.client-billing.submit\""), "{billing}");
        assert!(billing.contains("\"_INBOX_client_billing.>\""), "{billing}");
        assert!(!billing.contains("client-search"), "{billing}");
        assert_eq!(client_seed_file(dir.path(), "default"), seed_file(dir.path(), NatsRole::Client));
        manage_client_identities(dir.path(), &[], &["search".to_string()]).unwrap();
        init_credentials(dir.path(), &s, None).unwrap();
        let block = std::fs::read_to_string(dir.path().join(AUTH_FILE)).unwrap();
        assert!(block.contains(&key("billing")) && !block.contains("client-search"), "search revoked, billing kept");
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

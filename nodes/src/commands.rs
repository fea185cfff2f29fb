//! The subcommands.

mod chat;
mod deployments;
mod keys;
mod models;
mod serve;
mod status;
mod tasks;

pub(crate) use serve::default_node_id;

use bitinglip_bus_schema::Subjects;
use bitinglip_config::Config;
use bitinglip_nats::Bus;

use crate::cli::Command;

pub(crate) async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Up(_) => serve::run(config, true).await,
        Command::Node(_) => serve::run(config, false).await,
        Command::Chat(args) => chat::run(config, args).await,
        Command::Status(args) => status::run(config, args).await,
        Command::Tasks(cmd) => tasks::run(config, cmd).await,
        Command::Models(cmd) => models::run(config, cmd).await,
        Command::Workers(crate::cli::WorkersCommand::Ls { json }) => status::workers(config, json).await,
        Command::Cluster(crate::cli::ClusterCommand::Status(args)) => status::run(config, args).await,
        Command::Deployments(cmd) => deployments::run(config, cmd).await,
        Command::Keys(cmd) => keys::run(config, cmd).await,
        Command::Usage { key, from, to, json } => keys::usage(config, key, from, to, json).await,
        Command::Nats(crate::cli::NatsCommand::Init {
            out,
            jetstream_domain,
            hub,
            worker,
            revoke_worker,
            client,
            revoke_client,
        }) => nats_init(
            &config,
            &out,
            jetstream_domain.as_deref(),
            &hub,
            (&worker, &revoke_worker),
            (&client, &revoke_client),
        ),
        Command::Admin(crate::cli::AdminCommand::Migrate) => {
            let bus = client_bus(&config).await?;
            bitinglip_nats::Store::provision_as(&bus, &config, bitinglip_nats::Changes::All).await?;
            println!("streams and buckets match this config");
            Ok(())
        }
        Command::Bench(args) => crate::bench::run(config, args).await,
    }
}

/// Prints rows as aligned columns (the first row is the header).
fn print_table(rows: &[Vec<String>]) {
    let n = rows.first().map(Vec::len).unwrap_or(0);
    let widths: Vec<usize> = (0..n).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    for r in rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", line.join("  ").trim_end());
    }
}

/// Prints `done` for an ok, fails with the error otherwise.
/// A bus call's error as the CLI says it: `<kind>: <message>`.
fn said(e: bitinglip_bus_schema::WireError) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", e.kind, e.message)
}

/// `bitinglip nats init --out DIR`.
fn nats_init(
    config: &Config,
    out: &std::path::Path,
    domain: Option<&str>,
    hubs: &[String],
    (workers, revoked): (&[String], &[String]),
    (clients, revoked_clients): (&[String], &[String]),
) -> anyhow::Result<()> {
    use bitinglip_nats::permissions::{self as p, NatsRole};
    let added = p::manage_worker_identities(out, workers, revoked)
        .map_err(|e| anyhow::anyhow!("worker identities in {}: {e}", out.display()))?;
    let added_clients = p::manage_client_identities(out, clients, revoked_clients)
        .map_err(|e| anyhow::anyhow!("client identities in {}: {e}", out.display()))?;
    if let Some(d) = domain {
        let mut check = config.clone();
        check.jetstream.domain = Some(d.to_string());
        check.validate().map_err(|e| anyhow::anyhow!("--jetstream-domain: {e}"))?;
    }
    let subjects = Subjects::new(config.nats.subject_root.clone())?;
    let created = p::init_credentials(out, &subjects, domain)
        .map_err(|e| anyhow::anyhow!("writing NATS credentials into {}: {e}", out.display()))?;
    for role in NatsRole::ALL {
        let path = p::seed_file(out, role);
        let what = if created.contains(&role) { "created" } else { "kept" };
        println!("{what} {}", path.display());
    }
    for name in workers {
        let what = if added.contains(name) { "created" } else { "kept" };
        println!("{what} {} (worker node {name}'s own identity)", p::worker_seed_file(out, name).display());
    }
    for name in revoked {
        println!("revoked worker identity {name}: reload each nats-server with the new auth.conf");
    }
    for name in clients {
        let what = if added_clients.contains(name) { "created" } else { "kept" };
        let owner = bitinglip_bus_schema::client_owner(name);
        println!(
            "{what} {} (client {name}: owner {owner}, subjects {}, inbox prefix {})",
            p::client_seed_file(out, name).display(),
            subjects.owner_tasks(Some(&owner)),
            p::client_inbox_prefix(name)
        );
    }
    for name in revoked_clients {
        println!("revoked client identity {name}: reload each nats-server with the new auth.conf");
    }
    let auth = out.join(p::AUTH_FILE);
    // nats-server resolves an include against the folder of the config that names it.
    println!(
        "wrote {}: copy it next to each nats-server's config and add `include \"{}\"` to that config",
        auth.display(),
        p::AUTH_FILE
    );
    if domain.is_some() {
        println!(
            "wrote {}: the local users of an edge site's leaf node (the `worker` user)",
            out.join(p::LEAF_AUTH_FILE).display()
        );
    }
    if !hubs.is_empty() {
        let leaf = p::write_leaf_config(out, hubs)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", out.join(p::LEAF_FILE).display()))?;
        println!(
            "wrote {} (mode 0600, it holds the leaf seed): with {} beside it, `include \"{}\"` in an edge site's nats-server config",
            leaf.display(),
            p::LEAF_AUTH_FILE,
            p::LEAF_FILE
        );
    }
    println!("give each machine the seeds of the roles it runs, and set nats.credentials_dir to their folder");
    Ok(())
}

/// The CLI's NATS settings: as configured, or, when they name no credentials and `up`
/// made some in this data folder, its `admin` user.
fn cli_nats(config: &Config) -> bitinglip_config::NatsConfig {
    let mut n = config.nats.clone();
    let none = n.token.is_none()
        && n.user.is_none()
        && n.nkey_seed.is_none()
        && n.creds_file.is_none()
        && n.credentials_dir.is_none();
    let dir = config.data_dir.join("nats");
    let admin = bitinglip_nats::permissions::seed_file(&dir, bitinglip_nats::permissions::NatsRole::Admin);
    if none && admin.is_file() {
        n.credentials_dir = Some(dir);
    }
    n
}

/// A client connection for the CLI's one-shot commands.
pub(crate) async fn client_bus(config: &Config) -> anyhow::Result<Bus> {
    let name = format!("bitinglip-cli-{}", std::process::id());
    let client = bitinglip_nats::connect(&cli_nats(config), &name, None).await?;
    let subjects = Subjects::new(config.nats.subject_root.clone())?;
    Ok(Bus::new(client, subjects, name, config.nats.request_timeout))
}

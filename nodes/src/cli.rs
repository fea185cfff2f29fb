//! The command line: subcommands and the flags that override config keys.

use std::{collections::BTreeMap, path::PathBuf};

use bitinglip_config::{Config, ConfigError, OverrideValue, Role, Sources};
use clap::{Args, Parser, Subcommand};

/// BitingLip: distributed LLM inference over NATS.
#[derive(Debug, Parser)]
#[command(name = "bitinglip", version, about)]
pub(crate) struct Cli {
    /// TOML config file (also BITINGLIP_CONFIG).
    #[arg(long, global = true, env = "BITINGLIP_CONFIG")]
    config: Option<PathBuf>,
    /// NATS server URL(s), comma-separated (config `nats.servers`).
    #[arg(long, global = true, value_delimiter = ',')]
    nats: Vec<String>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run one node with every role; start a local nats-server if none answers.
    Up(ServeArgs),
    /// Run a node with chosen roles on an existing NATS.
    Node(NodeArgs),
    /// Chat with a model over NATS, streaming the answer.
    Chat(ChatArgs),
    /// List the cluster's nodes, roles, workers and models.
    Status(StatusArgs),
    /// Submit, inspect, follow and cancel tasks over NATS.
    #[command(subcommand)]
    Tasks(TasksCommand),
    /// Hub models: search, pull, list.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Workers across the cluster.
    #[command(subcommand)]
    Workers(WorkersCommand),
    /// The cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Deployments: how many replicas of which model, where.
    #[command(subcommand)]
    Deployments(DeploymentsCommand),
    /// API keys for the HTTP gateway: create, list, revoke.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Requests and tokens per API key, model and UTC day.
    Usage {
        /// One key's id (default: every key).
        #[arg(long)]
        key: Option<String>,
        /// First day, `YYYY-MM-DD` (UTC).
        #[arg(long)]
        from: Option<String>,
        /// Last day, `YYYY-MM-DD` (UTC).
        #[arg(long)]
        to: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// NATS credentials for a deployment on several machines.
    #[command(subcommand)]
    Nats(NatsCommand),
    /// Operations on the cluster's storage.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Measure the platform against raw NATS and direct mistral.rs; write docs/BENCHMARKS.md.
    Bench(crate::bench::BenchArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum AdminCommand {
    /// Apply this config's stream and bucket settings, also those that drop stored data
    /// (lower limits, shorter ages), which nodes refuse to apply on their own.
    Migrate,
}

#[derive(Debug, Subcommand)]
pub(crate) enum NatsCommand {
    /// Write one nkey seed per role (`<role>.nk`, mode 0600; existing ones are kept) and
    /// `auth.conf`, the users block for nats-server's config (`include` it).
    Init {
        /// The folder to write into.
        #[arg(long)]
        out: std::path::PathBuf,
        /// The cluster's JetStream domain (`jetstream { domain }` of each of its servers):
        /// adds the `leaf` user for edge sites and writes `leaf-auth.conf`.
        #[arg(long)]
        jetstream_domain: Option<String>,
        /// With `--jetstream-domain`: the cluster's leaf node listeners
        /// (`nats-leaf://host:7422`, repeatable); writes `leaf.conf` for an edge site.
        #[arg(long, requires = "jetstream_domain")]
        hub: Vec<String>,
        /// A worker node's own identity (`worker-NAME.nk`, NAME its node id; repeatable):
        /// a `worker` user of its own, revocable alone.
        #[arg(long)]
        worker: Vec<String>,
        /// Removes worker identity NAME (repeatable); copy the new `auth.conf` to the
        /// servers and reload them (`nats-server --signal reload`).
        #[arg(long)]
        revoke_worker: Vec<String>,
        /// A NATS client application's own identity (`client-NAME.nk`; NAME: letters,
        /// digits and `_`; repeatable): it owns the tasks it submits (`client-NAME`) and
        /// may read, list and cancel only those. `client.nk` is the identity `default`.
        #[arg(long)]
        client: Vec<String>,
        /// Removes client identity NAME (repeatable); copy the new `auth.conf` to the
        /// servers and reload them.
        #[arg(long)]
        revoke_client: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Create a key; its secret is printed once and stored nowhere.
    Create {
        /// A name for people.
        #[arg(long)]
        name: String,
        /// `inference` (the /v1 routes) or `admin` (everything).
        #[arg(long, default_value = "inference")]
        scope: String,
        /// The only models it may use, comma-separated (default: every model).
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// When it stops working, from now: `30d`, `12h`, …
        #[arg(long)]
        expires: Option<String>,
        /// Requests per minute, across every gateway.
        #[arg(long)]
        rpm: Option<u32>,
        /// Tokens (prompt and completion) per minute.
        #[arg(long)]
        tpm: Option<u64>,
        /// Tokens per day (UTC).
        #[arg(long)]
        tokens_per_day: Option<u64>,
        /// Requests and event streams in progress at once, on each gateway (default:
        /// `gateway.max_concurrent_per_key`).
        #[arg(long)]
        max_concurrent: Option<u32>,
        /// The tenant whose fair share of a busy model its tasks get (keys of one tenant
        /// share it; default: a tenant of its own).
        #[arg(long)]
        tenant: Option<String>,
        /// The tenant's weight (1 to 1000): a busy model serves tenants in proportion.
        #[arg(long)]
        weight: Option<u32>,
        /// Print JSON (with `id` and `key`).
        #[arg(long)]
        json: bool,
    },
    /// Every key (never the secrets).
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: every gateway refuses it within moments.
    Revoke {
        /// The key's id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum DeploymentsCommand {
    /// Every deployment with the nodes it is placed on and serving.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create or replace a deployment.
    Set(Box<DeploymentArgs>),
    /// Remove a deployment (its replicas are unloaded).
    Rm {
        /// The model's id.
        model: String,
    },
}

#[derive(Debug, Args)]
pub(crate) struct DeploymentArgs {
    /// A Hugging Face id or a model folder on the worker nodes.
    pub(crate) source: String,
    /// The id clients name (default: the source).
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Replicas wanted.
    #[arg(long, default_value_t = 1)]
    pub(crate) replicas: u32,
    /// Hub revision.
    #[arg(long)]
    pub(crate) revision: Option<String>,
    /// mistralrs (default) or echo.
    #[arg(long, default_value = "mistralrs")]
    pub(crate) engine: String,
    /// Most sequences per replica.
    #[arg(long)]
    pub(crate) max_sequences: Option<u32>,
    /// Only nodes offering at least this much memory (`16GiB`).
    #[arg(long)]
    pub(crate) min_memory: Option<String>,
    /// Only nodes of this device kind: cpu, cuda or metal.
    #[arg(long)]
    pub(crate) device: Option<String>,
    /// Memory one replica needs (`4GiB`); estimated from the model's shape when absent.
    #[arg(long)]
    pub(crate) memory: Option<String>,
    /// Tokens each sequence may hold (default: the model's, at most 8192).
    #[arg(long)]
    pub(crate) context_length: Option<u32>,
    /// Quantize the linear layers as the model loads: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2K,
    /// Q3K, Q4K, Q5K, Q6K or Q8K.
    #[arg(long)]
    pub(crate) quantize: Option<String>,
    /// Autoscale: fewest replicas (0: unload when idle, start again on a request).
    #[arg(long, requires = "max_replicas")]
    pub(crate) min_replicas: Option<u32>,
    /// Autoscale: most replicas (`--replicas` is where it starts).
    #[arg(long)]
    pub(crate) max_replicas: Option<u32>,
    /// Autoscale target: queue wait p95 to stay under (`2s`, the default target).
    #[arg(long, conflicts_with = "target_first_token")]
    pub(crate) target_queue_wait: Option<String>,
    /// Autoscale target: time to first token p95 to stay under (`1s`).
    #[arg(long)]
    pub(crate) target_first_token: Option<String>,
    /// Autoscale with `--min-replicas 0`: idle this long, it goes to 0 replicas
    /// (default: `cluster.idle_unload`).
    #[arg(long)]
    pub(crate) scale_to_zero_after: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum WorkersCommand {
    /// Every live worker: node, model, engine, device, state, slots in use.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// Every live node with its roles, device, memory and workers (as `bitinglip status`).
    Status(StatusArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum ModelsCommand {
    /// Search the hub.
    Search {
        /// Search text.
        query: String,
        /// Most results.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Download a hub model on a worker node (live progress), verify and register it.
    Pull {
        /// Hub id (`org/name`).
        model: String,
        /// Branch, tag or commit.
        #[arg(long, default_value = "main")]
        revision: String,
    },
    /// Every node's status of the models (downloading, ready, loading, loaded, failed).
    Status {
        /// Only this model.
        #[arg(long)]
        model: Option<String>,
    },
    /// List registered models.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Load a known model on at least N workers (creates an on-demand deployment).
    Load {
        /// The model's id.
        model: String,
        /// At least this many replicas.
        #[arg(long, default_value_t = 1)]
        replicas: u32,
    },
    /// Unload a model everywhere (its deployment goes to 0 replicas).
    Unload {
        /// The model's id.
        model: String,
    },
    /// Remove a model: deployment, registry entry and node statuses.
    Rm {
        /// The model's id.
        model: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TasksCommand {
    /// Queue a chat task and print its id at once.
    Submit {
        /// The model.
        #[arg(long)]
        model: String,
        /// Most tokens to generate.
        #[arg(long)]
        max_tokens: Option<u32>,
        /// `interactive` (default) or `batch`.
        #[arg(long, default_value = "interactive")]
        priority: String,
        /// A retry with the same key returns the same task.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// The prompt.
        prompt: String,
    },
    /// Print a task's status record.
    Get {
        /// Task id.
        id: String,
    },
    /// Stream a task's answer from the start (or from chunk --from).
    Watch {
        /// Task id.
        id: String,
        /// First chunk to show.
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
    /// Cancel a task.
    Cancel {
        /// Task id.
        id: String,
    },
    /// List recent tasks.
    Ls {
        /// Only this state: queued, running, completed, failed, cancelled.
        #[arg(long)]
        state: Option<String>,
        /// Most tasks to list.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

impl Command {
    /// True for the long-running commands (they log to stderr at info by default).
    pub(crate) fn is_server(&self) -> bool {
        matches!(self, Command::Up(_) | Command::Node(_))
    }
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// A model to serve: a Hugging Face id or a local folder in HF layout (repeatable).
    #[arg(long = "model")]
    pub(crate) models: Vec<String>,
    /// Engine for the models given with --model: mistralrs (default) or echo.
    #[arg(long)]
    pub(crate) engine: Option<String>,
    /// Most sequences generated at once per model.
    #[arg(long)]
    pub(crate) max_sequences: Option<u32>,
    /// HTTP listen address (config `gateway.http`).
    #[arg(long)]
    pub(crate) http: Option<String>,
    /// Data folder, for the local nats-server's JetStream (config `data_dir`).
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// This node's id (config `node_id`).
    #[arg(long)]
    pub(crate) node_id: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct NodeArgs {
    /// Roles, comma-separated: gateway, task-manager, model-manager, cluster-manager, worker.
    #[arg(long, value_delimiter = ',')]
    pub(crate) roles: Vec<String>,
    #[command(flatten)]
    pub(crate) serve: ServeArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ChatArgs {
    /// The model to ask.
    #[arg(long)]
    pub(crate) model: String,
    /// Most tokens to generate.
    #[arg(long)]
    pub(crate) max_tokens: Option<u32>,
    /// Sampling temperature.
    #[arg(long)]
    pub(crate) temperature: Option<f64>,
    /// A system prompt.
    #[arg(long)]
    pub(crate) system: Option<String>,
    /// The prompt.
    pub(crate) prompt: String,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

impl Cli {
    /// Layers defaults, the file, the environment and these flags into one config.
    pub(crate) fn load_config(&self) -> Result<Config, ConfigError> {
        let mut overrides: Vec<(String, OverrideValue)> = Vec::new();
        if !self.nats.is_empty() {
            overrides.push(("nats.servers".into(), OverrideValue::List(self.nats.clone())));
        }
        let serve = match &self.command {
            Command::Up(s) => {
                let all: Vec<String> = Role::ALL.iter().map(|r| r.as_str().to_string()).collect();
                overrides.push(("roles".into(), OverrideValue::List(all)));
                Some(s)
            }
            Command::Node(n) => {
                if !n.roles.is_empty() {
                    for r in &n.roles {
                        if Role::parse(r).is_none() {
                            return Err(ConfigError::Invalid {
                                key: "roles".into(),
                                value: r.clone(),
                                reason: "use gateway, task-manager, model-manager, cluster-manager or worker".into(),
                            });
                        }
                    }
                    overrides.push(("roles".into(), OverrideValue::List(n.roles.clone())));
                }
                Some(&n.serve)
            }
            _ => None,
        };
        if let Some(s) = serve {
            if let Some(http) = &s.http {
                overrides.push(("gateway.http".into(), OverrideValue::Str(http.clone())));
            }
            if let Some(dir) = &s.data_dir {
                overrides.push(("data_dir".into(), OverrideValue::Str(dir.display().to_string())));
            }
            if let Some(id) = &s.node_id {
                overrides.push(("node_id".into(), OverrideValue::Str(id.clone())));
            }
        }
        let env: BTreeMap<String, String> = std::env::vars().collect();
        let mut config = Config::load(Sources { file: self.config.clone(), env, overrides })?;
        if let Some(s) = serve {
            // --model adds workers beside those in the config file.
            for source in &s.models {
                let mut m = bitinglip_config::ModelConfig::new(source.clone());
                if let Some(engine) = &s.engine {
                    m.engine = bitinglip_config::EngineKind::parse(engine).ok_or_else(|| ConfigError::Invalid {
                        key: "--engine".into(),
                        value: engine.clone(),
                        reason: "use mistralrs or echo".into(),
                    })?;
                }
                if let Some(n) = s.max_sequences {
                    m.max_sequences = n;
                }
                config.worker.models.push(m);
            }
            config.validate()?;
        }
        Ok(config)
    }
}

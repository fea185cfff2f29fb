//! The site: the test hosts, their folders, and the services running on them.

use super::*;

pub(crate) struct Site {
    pub(crate) services: BTreeMap<(String, String), Service>,
    pub(crate) hosts: BTreeMap<String, Host>,
    pub(crate) lan: Lan,
    pub(crate) guide: Guide,
    pub(crate) dir: tempfile::TempDir,
    /// How the last `systemctl stop` went: the exit status and how long it took.
    pub(crate) last_stop: Option<(ExitStatus, Duration)>,
}

impl Site {
    /// hostA, hostB and hostC on `lan` (10.0.0.1 to .3 in the guide), nothing installed.
    pub(crate) fn new(lan: Lan) -> Site {
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
    pub(crate) fn add_host(&mut self, name: &str) {
        let host = self.lan.host(name);
        self.hosts.insert(name.to_string(), host);
        for d in ["root", "etc/systemd/system", "usr/local/bin", "var/lib", "run", "journal"] {
            fs::create_dir_all(self.root(name).join(d)).expect("a host's folder");
        }
    }

    /// The folder that is `/` to `host`.
    pub(crate) fn root(&self, host: &str) -> PathBuf {
        self.dir.path().join(host)
    }

    /// `/root/bitinglip-setup`.
    pub(crate) fn setup(&self) -> PathBuf {
        self.dir.path().join("bitinglip-setup")
    }

    pub(crate) fn ip(&self, host: &str) -> &str {
        self.hosts[host].ip()
    }

    /// What the guide names and what it is on `host` here (see the file's doc).
    pub(crate) fn map(&self, host: &str) -> Vec<(String, String)> {
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
    pub(crate) fn localize(&self, host: &str, text: &str) -> String {
        substitute(text, &self.map(host))
    }

    /// Localizes `file` of `host`'s folder in `/root/bitinglip-setup` (a copy of one of the
    /// guide's files); in a `node.toml`, the deployment gets the echo engine.
    pub(crate) fn localize_file(&self, host: &str, file: &str) {
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
    pub(crate) fn sh(&self, host: &str, cmd: &str) -> Result<String, String> {
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
    pub(crate) fn cli(&self, args: &str) -> Result<String, String> {
        self.sh("hostA", &format!("{CLI} {args}"))
    }

    /// Runs the guide's `commands` on `host`, as a root shell there would, but for what this
    /// machine has no means for (see the file's doc); the shell commands' outputs.
    pub(crate) fn run(&mut self, host: &str, commands: &[String]) -> Vec<String> {
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
    pub(crate) fn run_block(&mut self, host: &str, marker: &str) -> Vec<String> {
        let block = self.guide.block(marker);
        self.run(host, &block)
    }

    /// The unit `name` installed on `host`, localized.
    pub(crate) fn unit(&self, host: &str, name: &str) -> Unit {
        let file = self.root(host).join(format!("etc/systemd/system/{name}.service"));
        let text = fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        Unit::parse(&self.localize(host, &text))
    }

    pub(crate) fn spawn(&self, host: &str, name: &str, unit: &Unit) -> Child {
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
    pub(crate) fn start(&mut self, host: &str, name: &str) {
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
    pub(crate) fn stop(&mut self, host: &str, name: &str) -> Option<(ExitStatus, Duration)> {
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
    pub(crate) fn reload(&self, host: &str, name: &str) {
        let s = &self.services[&(host.to_string(), name.to_string())];
        let cmd = s.unit.exec_reload.as_ref().expect("ExecReload").replace("$MAINPID", &s.child.id().to_string());
        let words: Vec<&str> = cmd.split_whitespace().collect();
        let status = Command::new(words[0]).args(&words[1..]).status().expect("ExecReload runs");
        assert!(status.success(), "{cmd}: {status}");
    }

    /// What systemd does for a unit whose process exited: starts it again after RestartSec
    /// (`Restart=always`), unless the exit status is one of RestartPreventExitStatus, where
    /// the test fails.
    pub(crate) fn supervise(&mut self) {
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
    pub(crate) fn wait<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Site) -> Result<T, String>,
    ) -> T {
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

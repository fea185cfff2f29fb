//! The guide's systemd units, read and carried out as systemd would run them.

use super::*;

/// What the test reads from a unit's `[Service]` section.
#[derive(Clone)]
pub(crate) struct Unit {
    pub(crate) exec_start: Vec<String>,
    pub(crate) exec_reload: Option<String>,
    pub(crate) environment: Vec<(String, String)>,
    pub(crate) environment_files: Vec<String>,
    pub(crate) working_directory: Option<String>,
    pub(crate) kill_signal: Signal,
    pub(crate) timeout_stop: Duration,
    pub(crate) restart_always: bool,
    pub(crate) restart_sec: Duration,
    pub(crate) restart_prevent: Vec<i32>,
    pub(crate) state_directory: Option<String>,
    pub(crate) runtime_directory: Option<String>,
}

impl Unit {
    pub(crate) fn parse(text: &str) -> Unit {
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
pub(crate) struct Service {
    pub(crate) child: Child,
    pub(crate) unit: Unit,
    /// When its process was seen gone (for `RestartSec`).
    pub(crate) exited: Option<Instant>,
}

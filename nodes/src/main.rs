//! The `bitinglip` binary: parse the command line, load and validate the config (exit 64
//! on a bad one, before any network I/O), then hand over to the command.

mod bench;
mod cli;
mod commands;
mod telemetry;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let mut config = match cli.load_config() {
        Ok(c) => c,
        Err(err) => {
            eprintln!("bitinglip: {err}");
            return std::process::ExitCode::from(64);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("bitinglip: cannot start the async runtime: {err}");
            return std::process::ExitCode::from(70);
        }
    };
    let server = cli.command.is_server();
    if server && config.node_id.is_empty() {
        // Known before tracing starts, so every exported span names its node.
        config.node_id = commands::default_node_id();
    }
    let telemetry = telemetry::init(&config, server, runtime.handle());
    let result = runtime.block_on(commands::run(cli.command, config));
    // Spans still batched go out before the runtime their requests run on stops.
    drop(telemetry);
    drop(runtime);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bitinglip: {}", causes(&err));
            std::process::ExitCode::from(1)
        }
    }
}

/// An error and its causes, each said once: errors that repeat their source in their own
/// message (`… : {source}`) would otherwise print the same cause again for each level.
fn causes(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let message = cause.to_string();
        if text.contains(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused (os error 111)");
        let err = anyhow::Error::new(io)
            .context("IO error: Connection refused (os error 111)")
            .context("cannot connect to NATS at nats://127.0.0.1:1: IO error: Connection refused (os error 111)");
        assert_eq!(
            super::causes(&err),
            "cannot connect to NATS at nats://127.0.0.1:1: IO error: Connection refused (os error 111)"
        );
        let err = anyhow::anyhow!("inner").context("outer");
        assert_eq!(super::causes(&err), "outer: inner");
    }
}

//! The `bitinglip` binary: parse the command line, load and validate the config (exit 64
//! on a bad one, before any network I/O), then hand over to the command.

mod cli;
mod commands;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let config = match cli.load_config() {
        Ok(c) => c,
        Err(err) => {
            eprintln!("bitinglip: {err}");
            return std::process::ExitCode::from(64);
        }
    };
    commands::init_tracing(&config, cli.command.is_server());
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("bitinglip: cannot start the async runtime: {err}");
            return std::process::ExitCode::from(70);
        }
    };
    match runtime.block_on(commands::run(cli.command, config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bitinglip: {err:#}");
            std::process::ExitCode::from(1)
        }
    }
}

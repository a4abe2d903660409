//! The `plexus` command: run a server, or call one.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}

//! `edgemlops-agent`: the device runtime (see the `agent` library).

fn main() -> std::process::ExitCode {
    agent::cli::main_entry()
}

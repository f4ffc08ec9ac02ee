//! `edgemlops-hub`: see the `hub` library ([`hub::cli`]).

fn main() -> std::process::ExitCode {
    hub::cli::main_entry()
}

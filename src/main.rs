//! The `executioner` binary: parse the command line, run it, exit with its code. Nothing else.

fn main() {
    std::process::exit(executioner::cli::main());
}

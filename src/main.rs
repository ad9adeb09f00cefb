//! The `executioner` binary: parse the command line, run it, exit with its code. Nothing else.

fn main() {
    // A per-job supervisor (process::supervise) is a plain process: nothing else may start first.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == executioner::process::SUPERVISE_ARG)
    {
        executioner::process::supervise_main(std::env::args_os().skip(2));
    }
    std::process::exit(executioner::cli::main());
}

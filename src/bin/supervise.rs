//! `executioner-supervise`: the per-job supervisor (`process::supervise`) as an executable of its
//! own, installed beside `executioner`. A worker runs every job under a supervisor; starting this
//! small program instead of the whole `executioner` (which the supervisor falls back to) saves
//! most of the cost of loading a large executable once per job. Nothing else lives here.

fn main() {
    let mut args = std::env::args_os().skip(1);
    if args
        .next()
        .is_some_and(|arg| arg == executioner::process::SUPERVISE_ARG)
    {
        executioner::process::supervise_main(args);
    }
    eprintln!(
        "executioner-supervise is started by executioner's workers, not by hand \
         (usage: executioner-supervise {} FD -- PROGRAM ARGS...)",
        executioner::process::SUPERVISE_ARG
    );
    std::process::exit(2);
}

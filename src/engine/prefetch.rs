//! Creates the log files of the jobs that will probably start next, ahead of time, on a thread of
//! its own: creating a file is the slowest step between a job's end and its dependent's start
//! (tens of microseconds, and on some file systems a millisecond), and the run loop's machine is
//! mostly idle while jobs run. An attempt opens its log with `O_CREAT` either way, so a file not
//! made in time costs nothing but the usual creation.
//!
//! The thread walks the jobs in the order given and stays at most `window` files ahead of the
//! attempts started. Files it made for jobs that never ran are removed at the end of the round,
//! when still empty, so a skipped job has no log, as before.

use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError};

/// Files made at most this many attempts ahead.
pub(super) const WINDOW: usize = 16;

pub(super) struct LogPrefetch {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    started: usize,
    stop: bool,
    /// Jobs whose log file this prefetch created (it did not exist before).
    created: Vec<usize>,
}

impl LogPrefetch {
    /// Starts creating `logs` (job index and path, in the order the jobs are expected to start).
    pub(super) fn start(logs: Vec<(usize, PathBuf)>, window: usize) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("log-prefetch".into())
            .spawn(move || worker.run(logs, window))
            .ok();
        Self { shared, thread }
    }

    /// An attempt has started: the thread may make one more file.
    pub(super) fn started(&self) {
        let mut state = self.shared.lock();
        state.started += 1;
        self.shared.wake.notify_one();
    }

    /// Stops the thread and returns the jobs whose log file it created.
    pub(super) fn finish(mut self) -> Vec<usize> {
        self.shared.lock().stop = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            // It stops before its next file; one creation at most is waited for.
            let _ = thread.join();
        }
        std::mem::take(&mut self.shared.lock().created)
    }
}

impl Drop for LogPrefetch {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_one();
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn run(&self, logs: Vec<(usize, PathBuf)>, window: usize) {
        for (made, (job, path)) in logs.into_iter().enumerate() {
            {
                let mut state = self.lock();
                while !state.stop && made >= state.started + window {
                    state = self
                        .wake
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                if state.stop {
                    return;
                }
            }
            let created = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
                .is_ok();
            if created {
                self.lock().created.push(job);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_a_window_ahead_and_reports_what_it_made() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = |i: usize| dir.path().join(format!("j{i}.log"));
        std::fs::write(path(1), b"earlier round\n").expect("existing log");
        let logs: Vec<_> = (0..10).map(|i| (i, path(i))).collect();
        let prefetch = LogPrefetch::start(logs, 3);
        let exists = |i: usize| path(i).exists();
        let settled = |want: usize| {
            (0..200).any(|_| {
                std::thread::sleep(std::time::Duration::from_millis(5));
                (0..10).filter(|&i| exists(i)).count() == want
            })
        };
        assert!(settled(3), "three files ahead of no start");
        prefetch.started();
        prefetch.started();
        assert!(settled(5));
        assert!(!exists(5), "never more than the window ahead");
        let created = prefetch.finish();
        assert_eq!(created, [0, 2, 3, 4], "j1 existed already: not its own");
        assert_eq!(std::fs::read(path(1)).expect("read"), b"earlier round\n");
    }

    #[test]
    fn never_follows_a_symlink() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("target");
        let link = dir.path().join("j0.log");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let created = LogPrefetch::start(vec![(0, link)], 4);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(created.finish().is_empty());
        assert!(!target.exists());
    }
}

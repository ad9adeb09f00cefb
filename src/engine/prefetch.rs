//! Creates the log files of the jobs that will probably start next, ahead of time, on a thread of
//! its own: creating a file is the slowest step between a job's end and its dependent's start
//! (tens of microseconds, and on some file systems a millisecond), and the run loop's machine is
//! mostly idle while jobs run. An attempt opens its log with `O_CREAT` either way, so a file not
//! made in time costs nothing but the usual creation.
//!
//! The thread walks the jobs in the order given and stays at most `window` files ahead of the
//! attempts started (when it is that far ahead it sleeps until half the window is used). Files it made for jobs that never ran are removed at the end of the round,
//! when still empty, so a skipped job has no log, as before.

use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

/// Files made at most this many attempts ahead.
pub(super) const WINDOW: usize = 16;

pub(super) struct LogPrefetch {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    /// Attempts started (by the run loop).
    started: AtomicUsize,
    /// The thread sleeps until `started` reaches this (`usize::MAX`: it does not sleep). It waits
    /// for half a window at a time, so the run loop wakes it once per half window rather than at
    /// every start: a wake-up is a system call on the loop's path.
    resume_at: AtomicUsize,
    stop: AtomicBool,
    /// Jobs whose log file the thread created (it did not exist before).
    created: Mutex<Vec<usize>>,
    sleep: Mutex<()>,
    wake: Condvar,
}

impl LogPrefetch {
    /// Starts creating `logs` (job index and path, in the order the jobs are expected to start).
    pub(super) fn start(logs: Vec<(usize, PathBuf)>, window: usize) -> Self {
        let shared = Arc::new(Shared {
            started: AtomicUsize::new(0),
            resume_at: AtomicUsize::new(usize::MAX),
            stop: AtomicBool::new(false),
            created: Mutex::new(Vec::new()),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("log-prefetch".into())
            .spawn(move || worker.run(logs, window.max(1)))
            .ok();
        Self { shared, thread }
    }

    /// An attempt has started: the thread may make one more file.
    pub(super) fn started(&self) {
        let started = self.shared.started.fetch_add(1, Ordering::SeqCst) + 1;
        if started >= self.shared.resume_at.load(Ordering::SeqCst) {
            self.shared.wake_up();
        }
    }

    /// Stops the thread and returns the jobs whose log file it created.
    pub(super) fn finish(mut self) -> Vec<usize> {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake_up();
        if let Some(thread) = self.thread.take() {
            // It stops before its next file; one creation at most is waited for.
            let _ = thread.join();
        }
        std::mem::take(&mut *lock(&self.shared.created))
    }
}

impl Drop for LogPrefetch {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake_up();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn wake_up(&self) {
        // Taken so that the wake-up cannot fall between the thread's last check and its wait.
        let _sleep = lock(&self.sleep);
        self.wake.notify_one();
    }

    fn run(&self, logs: Vec<(usize, PathBuf)>, window: usize) {
        for (made, (job, path)) in logs.into_iter().enumerate() {
            if made >= self.started.load(Ordering::SeqCst) + window {
                let mut sleep = lock(&self.sleep);
                // Until half the window is used up.
                let resume_at = (made + 1 + window / 2).saturating_sub(window);
                self.resume_at.store(resume_at, Ordering::SeqCst);
                while !self.stop.load(Ordering::SeqCst)
                    && self.started.load(Ordering::SeqCst) < resume_at
                {
                    sleep = self
                        .wake
                        .wait(sleep)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                self.resume_at.store(usize::MAX, Ordering::SeqCst);
            }
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            let created = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
                .is_ok();
            if created {
                lock(&self.created).push(job);
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

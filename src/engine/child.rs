//! Stage child processes: start `bitnet-pipeline exec-stage`, stream its
//! events back over a channel, and stop it (and everything it started)
//! cleanly.
//!
//! Each child leads its own process group, so a terminal's Ctrl-C reaches
//! only the runner, which then stops children in order; and each child asks
//! the kernel to SIGTERM it if the runner dies (`PR_SET_PDEATHSIG`), so a
//! `kill -9` of the runner leaves no orphans writing into a run folder.
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::Sender;

use super::protocol::Event;

/// A message from a child's reader thread.
#[derive(Debug)]
pub enum ChildMsg {
    Event(String, Event),
    /// A line the child printed that was meant as an event but did not parse.
    BadEvent(String, String),
    Exited(String, std::io::Result<ExitStatus>),
    /// A batch job's node and start/end times (Slurm executor), if it wrote them.
    JobRan(String, Option<(String, String, String)>),
}

/// The environment variable libtorch's (OpenMP) intra-op pool reads at start;
/// our kernels follow libtorch's thread count.
pub const THREADS_ENV: &str = "OMP_NUM_THREADS";

/// Intra-op threads for one stage when up to `jobs` stages run at once on
/// `cores` cores: an equal share, at least one.
///
/// Why: libtorch and our kernels each default to one thread per core, so two
/// torch stages at once ask for twice the cores, and OpenMP's workers spin at
/// every barrier while the other stage holds the core: a sweep at `--jobs 2`
/// on 2 cores ran its training steps many times slower than one at a time.
/// `None` when one stage runs at a time (the default of every core is right)
/// or the user already chose (`OMP_NUM_THREADS` set for the runner is
/// inherited unchanged).
pub fn thread_share(jobs: usize, cores: usize, user_set: bool) -> Option<usize> {
    (jobs > 1 && !user_set).then(|| (cores / jobs).max(1))
}

/// Starts `exe exec-stage invocation` for `stage`; its stderr and stray
/// stdout go to `log_path`. `threads`, when given, caps the stage's intra-op
/// threads (see [`thread_share`]).
pub fn spawn(
    exe: &Path,
    stage: &str,
    invocation: &Path,
    log_path: &Path,
    threads: Option<usize>,
    tx: Sender<ChildMsg>,
) -> std::io::Result<u32> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)?;
    let mut cmd = Command::new(exe);
    cmd.arg("exec-stage")
        .arg(invocation)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log.try_clone()?));
    if let Some(n) = threads {
        cmd.env(THREADS_ENV, n.to_string());
    }
    // SAFETY: between fork and exec we only call async-signal-safe
    // functions (setpgid, prctl, getppid) and touch no Rust state.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let pid = child.id();
    let stdout = child.stdout.take().expect("stdout is piped");
    let stage = stage.to_string();
    let mut log = log;
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            match Event::from_line(&line) {
                Some(Ok(ev)) => {
                    let _ = tx.send(ChildMsg::Event(stage.clone(), ev));
                }
                Some(Err(e)) => {
                    let _ = tx.send(ChildMsg::BadEvent(stage.clone(), format!("{e}: {line}")));
                }
                None => {
                    let _ = writeln!(log, "{line}");
                }
            }
        }
        let status = child.wait();
        let _ = tx.send(ChildMsg::Exited(stage, status));
    });
    Ok(pid)
}

/// Sends `signal` to the child's whole process group.
pub fn signal_group(pid: u32, signal: i32) {
    // SAFETY: kill(2) with a negative pid signals a process group we
    // created; it touches no memory.
    unsafe {
        libc::kill(-(pid as libc::pid_t), signal);
    }
}

/// Where a stage's runner-side log goes.
pub fn log_path(run_dir: &Path, stage_dir: &str) -> PathBuf {
    run_dir.join("logs").join(format!("{stage_dir}.log"))
}

#[cfg(test)]
mod tests {
    use super::thread_share;

    #[test]
    fn parallel_stages_share_the_cores_unless_the_user_chose() {
        assert_eq!(thread_share(1, 8, false), None);
        assert_eq!(thread_share(2, 8, false), Some(4));
        assert_eq!(thread_share(3, 8, false), Some(2));
        assert_eq!(thread_share(2, 2, false), Some(1));
        assert_eq!(thread_share(4, 2, false), Some(1));
        assert_eq!(thread_share(2, 8, true), None);
    }
}

//! The child processes of `kagi up` (nodes, simulated devices, vault sites, the XKS proxy):
//! starting them, restarting one that exits on its own with back-off, and stopping them all.
//!
//! A node, device or site that exits while `kagi up` runs (a crash, `kill -9`, an OOM kill) is
//! started again with the same arguments, so the local network heals as a service manager
//! would heal it. The delay doubles from 0.5 s up to 30 s while the process keeps exiting
//! within a minute of its start, and falls back to 0.5 s once a run has lasted a minute. A
//! process that exits ten times in a row that quickly is given up on, with its log's path.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// What a child process is, for messages and for what `kagi up` gives up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A key manager node (`kagi node`).
    Node,
    /// A simulated QKD device pair (`kagi device`).
    Device,
    /// A vault storage site (`kagi vault site`).
    Site,
    /// The XKS proxy; not restarted (it holds no state and `kagi up` prints its address once).
    Proxy,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Node => "node",
            Kind::Device => "simulated device",
            Kind::Site => "vault site",
            Kind::Proxy => "XKS proxy",
        })
    }
}

/// First restart delay; it doubles with every quick exit in a row.
const FIRST_DELAY: Duration = Duration::from_millis(500);
/// Longest restart delay.
const MAX_DELAY: Duration = Duration::from_secs(30);
/// A run this long resets the back-off: the process was healthy.
const STABLE: Duration = Duration::from_secs(60);
/// Quick exits in a row after which a process is given up on.
const GIVE_UP_AFTER: u32 = 10;

/// When to start a process again after it exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Backoff {
    /// Exits in a row, each within [`STABLE`] of its start.
    pub quick_exits: u32,
}

impl Backoff {
    /// Records an exit after a run of `ran`; the delay before the next start, or `None` to
    /// give up.
    pub fn exited(&mut self, ran: Duration) -> Option<Duration> {
        if ran >= STABLE {
            self.quick_exits = 0;
        }
        if self.quick_exits >= GIVE_UP_AFTER {
            return None;
        }
        let delay = FIRST_DELAY
            .checked_mul(1 << self.quick_exits.min(16))
            .unwrap_or(MAX_DELAY)
            .min(MAX_DELAY);
        self.quick_exits += 1;
        Some(delay)
    }
}

/// One child process of `kagi up`.
pub(crate) struct Child {
    /// Its name in messages (node ID, link name, SAE ID).
    pub id: String,
    /// What it is.
    pub kind: Kind,
    /// The running process (or the last one, once it exited).
    pub proc: tokio::process::Child,
    /// Where its process ID is written, for `kagi up --stop` and left-over detection.
    pub pid_file: PathBuf,
    /// Its log (appended to across restarts).
    pub log: PathBuf,
    /// Whether the process has exited (and is not running again yet).
    pub exited: bool,
    /// The arguments of `kagi` that start it; `None`: never restarted.
    args: Option<Vec<OsString>>,
    started: Instant,
    backoff: Backoff,
    /// When to start it again, while it is down.
    restart_at: Option<Instant>,
}

/// Starts `kagi ARGS` as a child of kind `kind`, logging to `log` and writing its pid to
/// `pid_file`; it is restarted with back-off if it exits while `kagi up` supervises it.
pub(crate) fn launch(
    kind: Kind,
    id: &str,
    args: Vec<OsString>,
    log: &Path,
    pid_file: &Path,
) -> anyhow::Result<Child> {
    let proc = spawn(&args, log, pid_file).with_context(|| format!("cannot start {kind} {id}"))?;
    Ok(Child {
        id: id.to_owned(),
        kind,
        proc,
        pid_file: pid_file.to_owned(),
        log: log.to_owned(),
        exited: false,
        args: Some(args),
        started: Instant::now(),
        backoff: Backoff { quick_exits: 0 },
        restart_at: None,
    })
}

/// A child started elsewhere (the XKS proxy), supervised but never restarted.
pub(crate) fn adopt(
    kind: Kind,
    id: &str,
    proc: tokio::process::Child,
    pid_file: PathBuf,
    log: PathBuf,
) -> Child {
    Child {
        id: id.to_owned(),
        kind,
        proc,
        pid_file,
        log,
        exited: false,
        args: None,
        started: Instant::now(),
        backoff: Backoff { quick_exits: 0 },
        restart_at: None,
    }
}

fn spawn(args: &[OsString], log: &Path, pid_file: &Path) -> anyhow::Result<tokio::process::Child> {
    let mut cmd = super::child::kagi_child(log)?;
    cmd.args(args);
    let proc = cmd.spawn()?;
    if let Some(pid) = proc.id() {
        std::fs::write(pid_file, format!("{pid}\n"))?;
    }
    Ok(proc)
}

impl Child {
    /// Notes that the process exited with `st` and schedules its restart (or gives up).
    fn on_exit(&mut self, st: std::process::ExitStatus, now: Instant) {
        self.exited = true;
        let _ = std::fs::remove_file(&self.pid_file);
        let (kind, id, log) = (self.kind, &self.id, self.log.display());
        if self.args.is_none() {
            eprintln!("kagi up: {kind} {id} exited unexpectedly ({st}); see {log}");
            return;
        }
        match self.backoff.exited(now.duration_since(self.started)) {
            Some(delay) => {
                eprintln!(
                    "kagi up: {kind} {id} exited unexpectedly ({st}); restarting it in {:.1} s \
                     (log {log})",
                    delay.as_secs_f64()
                );
                self.restart_at = Some(now + delay);
            }
            None => eprintln!(
                "kagi up: {kind} {id} exited {GIVE_UP_AFTER} times in a row within a minute of \
                 starting ({st}); giving up on it; see {log}"
            ),
        }
    }

    /// Starts the process again if its restart is due.
    fn restart_if_due(&mut self, now: Instant) {
        let (Some(at), Some(args)) = (self.restart_at, &self.args) else {
            return;
        };
        if now < at {
            return;
        }
        match spawn(args, &self.log, &self.pid_file) {
            Ok(proc) => {
                eprintln!(
                    "kagi up: {} {} restarted (pid {})",
                    self.kind,
                    self.id,
                    proc.id().unwrap_or(0)
                );
                self.proc = proc;
                self.exited = false;
                self.started = now;
                self.restart_at = None;
            }
            Err(e) => {
                eprintln!("kagi up: cannot restart {} {}: {e:#}", self.kind, self.id);
                let ran = Duration::ZERO;
                self.restart_at = self.backoff.exited(ran).map(|d| now + d);
            }
        }
    }

    /// Down for good: exited, and no restart will come.
    fn given_up(&self) -> bool {
        self.exited && self.restart_at.is_none()
    }
}

/// Sends `sig` (a name such as `TERM`) to `pid`.
pub(crate) fn signal(pid: u32, sig: &str) {
    // No `unsafe` (libc::kill) in this workspace: the `kill` utility does it.
    let _ = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Stops every running child: SIGTERM, then SIGKILL after 10 s; removes their pid files.
pub(crate) async fn stop_all(children: &mut [Child]) {
    for c in children.iter_mut() {
        c.restart_at = None;
        if !c.exited {
            if let Some(pid) = c.proc.id() {
                signal(pid, "TERM");
            }
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for c in children.iter_mut() {
        if !c.exited {
            if tokio::time::timeout_at(deadline, c.proc.wait())
                .await
                .is_err()
            {
                eprintln!(
                    "kagi up: {} {} did not stop in time; killing it",
                    c.kind, c.id
                );
                let _ = c.proc.start_kill();
                let _ = c.proc.wait().await;
            }
            c.exited = true;
        }
        let _ = std::fs::remove_file(&c.pid_file);
    }
}

/// Watches the children until `shutdown` resolves (returning its name), restarting those that
/// exit; fails once every node is down for good.
pub(crate) async fn supervise(
    children: &mut [Child],
    shutdown: impl std::future::Future<Output = &'static str>,
) -> anyhow::Result<&'static str> {
    tokio::pin!(shutdown);
    loop {
        let nodes = children.iter().filter(|c| c.kind == Kind::Node);
        if nodes.clone().count() > 0 && nodes.clone().all(Child::given_up) {
            bail!("every node has exited");
        }
        tokio::select! {
            s = &mut shutdown => return Ok(s),
            () = tokio::time::sleep(Duration::from_millis(250)) => {
                let now = Instant::now();
                for c in children.iter_mut() {
                    if c.exited {
                        c.restart_if_due(now);
                    } else if let Ok(Some(st)) = c.proc.try_wait() {
                        c.on_exit(st, now);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_doubles_while_a_process_keeps_exiting_and_resets_after_a_healthy_run() {
        let mut b = Backoff { quick_exits: 0 };
        let quick = Duration::from_secs(1);
        let delays: Vec<_> = (0..8).map(|_| b.exited(quick).unwrap()).collect();
        let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        assert_eq!(
            b.exited(STABLE).unwrap(),
            FIRST_DELAY,
            "a healthy run resets"
        );
        let mut b = Backoff { quick_exits: 0 };
        for _ in 0..GIVE_UP_AFTER {
            assert!(b.exited(quick).is_some());
        }
        assert_eq!(b.exited(quick), None, "given up after {GIVE_UP_AFTER}");
    }
}

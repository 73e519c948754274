//! Child `kagi` processes that `kagi up` starts (nodes, simulated devices, vault sites, the XKS
//! proxy): one way to set them up.

use std::path::Path;
use std::process::Stdio;

use anyhow::Context;

/// `kagi` itself, ready to take its arguments: output appended to `log` without terminal colour
/// codes, no stdin, killed when dropped, and (on Unix) in its own process group so that a
/// terminal Ctrl-C reaches only the parent, which then stops its children in order.
pub fn kagi_child(log: &Path) -> anyhow::Result<tokio::process::Command> {
    let exe = std::env::current_exe().context("cannot find the kagi executable")?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open the log {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .env("NO_COLOR", "1")
        .kill_on_drop(true);
    #[cfg(unix)]
    cmd.process_group(0);
    Ok(cmd)
}

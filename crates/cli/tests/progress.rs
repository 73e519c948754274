//! Long commands draw progress on a terminal and stay quiet in pipes (issue 13, part 5). The
//! terminal is a real pseudo-terminal from util-linux `script`; the test is skipped with a
//! message where `script` is missing.

use std::process::Command;

fn kagi() -> &'static str {
    env!("CARGO_BIN_EXE_kagi")
}

const ARGS: &str = "link-sim --distance 10 --pulses 2e8";

#[test]
fn link_sim_draws_a_bar_on_a_terminal() {
    let Ok(out) = Command::new("script")
        .args(["-qec", &format!("{} {ARGS}", kagi()), "/dev/null"])
        .output()
    else {
        eprintln!("skipped: util-linux `script` is not installed");
        return;
    };
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("pulses simulated"),
        "no progress bar on a terminal:\n{text}"
    );
    // The report still comes after the bar.
    assert!(text.contains("throughput_sifted_bps"), "{text}");
}

#[test]
fn link_sim_is_quiet_in_a_pipe() {
    let out = Command::new(kagi()).args(ARGS.split(' ')).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let all = format!("{}{err}", String::from_utf8_lossy(&out.stdout));
    assert!(
        !all.contains("pulses simulated"),
        "bar drawn into a pipe:\n{all}"
    );
    assert!(!all.contains('\r'), "terminal control in a pipe:\n{all}");
}

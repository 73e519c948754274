//! Progress bars for long commands (indicatif). They draw on stderr only when it is a
//! terminal, so pipes, logs and tests stay quiet.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar of `len` steps with a message; hidden when stderr is not a terminal.
pub fn bar(len: u64, msg: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(len), target());
    pb.set_style(
        ProgressStyle::with_template("{msg:<28} [{bar:30.cyan/blue}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(msg.to_owned());
    pb
}

/// A bar over a count of work items shown with SI units (pulses, bits); hidden when stderr is
/// not a terminal.
pub fn counter(len: u64, msg: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(len), target());
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:<28} [{bar:30.cyan/blue}] {human_pos}/{human_len} {percent}% eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(msg.to_owned());
    pb
}

/// A spinner with a message and the time elapsed, for work of unknown length (a vault put, a
/// plan); hidden when stderr is not a terminal.
pub fn spinner(msg: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(None, target());
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.set_message(msg.to_owned());
    if !pb.is_hidden() {
        pb.enable_steady_tick(std::time::Duration::from_millis(120));
    }
    pb
}

fn target() -> ProgressDrawTarget {
    if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hidden_when_not_a_terminal() {
        // Tests run with stderr captured (not a terminal).
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            assert!(super::bar(3, "x").is_hidden());
            assert!(super::counter(3, "x").is_hidden());
            assert!(super::spinner("x").is_hidden());
        }
    }
}

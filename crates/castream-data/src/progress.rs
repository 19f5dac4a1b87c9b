//! Progress bars for long work. indicatif hides them when stderr is not a terminal (CI, pipes).

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `len` steps with a message, elapsed time and ETA.
pub fn bar(len: u64, message: impl Into<String>) -> ProgressBar {
    let style = ProgressStyle::with_template("{msg:>24} [{bar:40.cyan/blue}] {pos}/{len} {elapsed_precise} eta {eta}")
        .expect("static template")
        .progress_chars("=> ");
    ProgressBar::new(len).with_style(style).with_message(message.into())
}

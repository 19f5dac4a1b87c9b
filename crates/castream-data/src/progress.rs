//! Progress of long work. On a terminal, an indicatif bar; when stderr is redirected (CI, a log
//! file, a Slurm job), plain lines instead: one when a stage finishes, and one every
//! [`LINE_INTERVAL`] while it runs, with the count, elapsed time and ETA.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How often a redirected stage prints a line while it runs.
pub const LINE_INTERVAL: Duration = Duration::from_secs(30);

/// Progress over a known number of steps.
pub struct Bar {
    mode: Mode,
}

enum Mode {
    Terminal(ProgressBar),
    Lines(Mutex<Lines>),
}

/// The state of a stage reported in lines.
struct Lines {
    message: String,
    len: u64,
    pos: u64,
    started: Instant,
    printed: Instant,
}

impl Lines {
    /// The line for the state at `now`.
    fn line(&self, now: Instant) -> String {
        let elapsed = now.duration_since(self.started);
        if self.pos >= self.len {
            return format!("{}: {} done in {}", self.message, self.len, clock(elapsed));
        }
        let eta = if self.pos == 0 {
            "unknown".to_string()
        } else {
            clock(elapsed.mul_f64((self.len - self.pos) as f64 / self.pos as f64))
        };
        let percent = 100.0 * self.pos as f64 / self.len.max(1) as f64;
        format!("{}: {}/{} ({percent:.0}%), {} elapsed, eta {eta}", self.message, self.pos, self.len, clock(elapsed))
    }

    /// Moves to `pos`; returns a line when one is due.
    fn advance(&mut self, pos: u64, now: Instant) -> Option<String> {
        self.pos = pos.min(self.len);
        (now.duration_since(self.printed) >= LINE_INTERVAL && self.pos < self.len).then(|| {
            self.printed = now;
            self.line(now)
        })
    }
}

/// `1h02m03s`, `4m05s` or `6s`.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, s) => format!("{h}h{m:02}m{s:02}s"),
    }
}

/// A progress bar over `len` steps with a message, elapsed time and ETA; lines when stderr is
/// not a terminal.
pub fn bar(len: u64, message: impl Into<String>) -> Bar {
    let message = message.into();
    if std::io::stderr().is_terminal() {
        let style =
            ProgressStyle::with_template("{msg:>24} [{bar:40.cyan/blue}] {pos}/{len} {elapsed_precise} eta {eta}")
                .expect("static template")
                .progress_chars("=> ");
        Bar { mode: Mode::Terminal(ProgressBar::new(len).with_style(style).with_message(message)) }
    } else {
        let now = Instant::now();
        Bar { mode: Mode::Lines(Mutex::new(Lines { message, len, pos: 0, started: now, printed: now })) }
    }
}

impl Bar {
    pub fn inc(&self, n: u64) {
        match &self.mode {
            Mode::Terminal(b) => b.inc(n),
            Mode::Lines(l) => {
                let mut l = l.lock().unwrap_or_else(|e| e.into_inner());
                let pos = l.pos + n;
                if let Some(line) = l.advance(pos, Instant::now()) {
                    eprintln!("{line}");
                }
            }
        }
    }

    pub fn set_position(&self, pos: u64) {
        match &self.mode {
            Mode::Terminal(b) => b.set_position(pos),
            Mode::Lines(l) => {
                if let Some(line) = l.lock().unwrap_or_else(|e| e.into_inner()).advance(pos, Instant::now()) {
                    eprintln!("{line}");
                }
            }
        }
    }

    pub fn set_message(&self, message: impl Into<String>) {
        match &self.mode {
            Mode::Terminal(b) => b.set_message(message.into()),
            Mode::Lines(l) => l.lock().unwrap_or_else(|e| e.into_inner()).message = message.into(),
        }
    }

    /// Ends the stage: the bar disappears from a terminal; in lines, the stage's final line.
    pub fn finish_and_clear(&self) {
        match &self.mode {
            Mode::Terminal(b) => b.finish_and_clear(),
            Mode::Lines(l) => eprintln!("{}", l.lock().unwrap_or_else(|e| e.into_inner()).line(Instant::now())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_report_count_elapsed_and_eta_at_most_every_interval() {
        let t0 = Instant::now();
        let mut l = Lines { message: "Grad-CAM CA: scoring".into(), len: 500, pos: 0, started: t0, printed: t0 };
        assert_eq!(l.advance(100, t0 + Duration::from_secs(10)), None, "too soon for a line");
        let line = l.advance(125, t0 + LINE_INTERVAL).unwrap();
        // 125 of 500 in 30 s: 375 more at the same rate take 90 s.
        assert_eq!(line, "Grad-CAM CA: scoring: 125/500 (25%), 30s elapsed, eta 1m30s");
        assert_eq!(l.advance(200, t0 + LINE_INTERVAL + Duration::from_secs(1)), None);
        l.advance(500, t0 + Duration::from_secs(3725));
        assert_eq!(l.line(t0 + Duration::from_secs(3725)), "Grad-CAM CA: scoring: 500 done in 1h02m05s");
    }
}

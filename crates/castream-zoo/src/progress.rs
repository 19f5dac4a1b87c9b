//! Training progress: a bar per epoch with the running loss, and a line per finished epoch.

use castream_backbones::train::{EpochReport, Progress};
use castream_data::progress::bar;
use castream_data::progress::Bar;

/// Progress of a training run: a bar per epoch with the running loss, and optionally one printed
/// line per finished epoch.
pub struct TrainBars {
    name: String,
    print_epochs: bool,
    bar: Option<Bar>,
    /// Images per step, to show images per second; `None`: not shown.
    batch_size: Option<usize>,
    epoch_started: Option<std::time::Instant>,
}

impl TrainBars {
    pub fn new(name: &str, print_epochs: bool) -> TrainBars {
        TrainBars { name: name.into(), print_epochs, bar: None, batch_size: None, epoch_started: None }
    }

    /// Also shows the images per second of the current epoch (`batch_size` images per step).
    pub fn counting_images(self, batch_size: usize) -> TrainBars {
        TrainBars { batch_size: Some(batch_size), ..self }
    }
}

impl Progress for TrainBars {
    fn step(&mut self, epoch: usize, step: usize, steps: usize, loss: f64) {
        let name = &self.name;
        let started = *self.epoch_started.get_or_insert_with(std::time::Instant::now);
        let bar = self.bar.get_or_insert_with(|| bar(steps as u64, format!("{name} epoch {}", epoch + 1)));
        bar.set_position(step as u64 + 1);
        if step.is_multiple_of(10) {
            // Timed from the end of the epoch's first step, so the rate counts the steps after it.
            let rate = match self.batch_size {
                Some(b) if step > 0 => format!(", {:.1} images/s", (step * b) as f64 / started.elapsed().as_secs_f64()),
                _ => String::new(),
            };
            bar.set_message(format!("{name} epoch {} loss {loss:.3}{rate}", epoch + 1));
        }
    }

    fn epoch(&mut self, r: &EpochReport) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        self.epoch_started = None;
        if self.print_epochs {
            println!(
                "{} epoch {}: loss {:.4}, train acc {:.2}%, val acc {:.2}%, lr {:.2e}, {:.0} s",
                self.name,
                r.epoch + 1,
                r.train_loss,
                100.0 * r.train_accuracy,
                100.0 * r.val_accuracy,
                r.lr,
                r.seconds
            );
        }
    }
}

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
}

impl TrainBars {
    pub fn new(name: &str, print_epochs: bool) -> TrainBars {
        TrainBars { name: name.into(), print_epochs, bar: None }
    }
}

impl Progress for TrainBars {
    fn step(&mut self, epoch: usize, step: usize, steps: usize, loss: f64) {
        let name = &self.name;
        let bar = self.bar.get_or_insert_with(|| bar(steps as u64, format!("{name} epoch {}", epoch + 1)));
        bar.set_position(step as u64 + 1);
        if step.is_multiple_of(10) {
            bar.set_message(format!("{name} epoch {} loss {loss:.3}", epoch + 1));
        }
    }

    fn epoch(&mut self, r: &EpochReport) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
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

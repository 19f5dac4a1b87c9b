//! A value that parses but that the method cannot use: the error of every `validate()` of a
//! configuration type (training, optimiser, stream, CAM options, backbone, spec settings). Each
//! type states its ranges in one place; the spec validator turns the error into
//! `file:line: [profile] key = value: ...` and the CLI into `--flag value: ...`.

use std::fmt::Display;
use std::ops::RangeInclusive;

/// `key = value` outside its valid range, with the range in words and a valid example.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} = {value}: out of range; valid: {valid}. Fix: e.g. {key} = {example}")]
pub struct OutOfRange {
    /// The key, dotted from the type that validated it: `epochs`, then `train.epochs` once the
    /// owner of that table adds its name with [`OutOfRange::within`].
    pub key: String,
    pub value: String,
    /// The valid values in words: `1 to 10000`.
    pub valid: String,
    /// A valid value, for the fix.
    pub example: String,
}

impl OutOfRange {
    pub fn new(key: &str, value: impl Display, valid: impl Into<String>, example: impl Display) -> OutOfRange {
        OutOfRange { key: key.into(), value: value.to_string(), valid: valid.into(), example: example.to_string() }
    }

    /// The same error one table up: `epochs` in `train` becomes `train.epochs`.
    pub fn within(mut self, table: &str) -> OutOfRange {
        self.key = format!("{table}.{}", self.key);
        self
    }

    /// The message for a command-line flag that set the value: `--size 20000: out of range; ...`.
    pub fn as_flag(&self, flag: &str) -> String {
        format!("{flag} {}: out of range; valid: {}. Fix: e.g. {flag} {}", self.value, self.valid, self.example)
    }
}

/// `value` within `range`, else an [`OutOfRange`] for `key` proposing `example`.
pub fn in_range(key: &str, value: usize, range: RangeInclusive<usize>, example: usize) -> Result<(), OutOfRange> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(OutOfRange::new(key, value, format!("{} to {}", range.start(), range.end()), example))
    }
}

/// A finite `value` with `low < value <= high` (`low_inclusive`: `low <= value`), else an
/// [`OutOfRange`] for `key` proposing `example`. NaN and infinities are always out of range.
pub fn in_interval(
    key: &str,
    value: f64,
    (low, low_inclusive): (f64, bool),
    (high, high_inclusive): (f64, bool),
    example: f64,
) -> Result<(), OutOfRange> {
    let above = if low_inclusive { value >= low } else { value > low };
    let below = if high_inclusive { value <= high } else { value < high };
    if value.is_finite() && above && below {
        Ok(())
    } else {
        let valid = format!(
            "a finite number in {}{low}, {high}{}",
            if low_inclusive { "[" } else { "(" },
            if high_inclusive { "]" } else { ")" }
        );
        Err(OutOfRange::new(key, value, valid, example))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_key_value_range_and_fix() {
        let e = in_range("epochs", 0, 1..=10_000, 10).unwrap_err().within("train");
        assert_eq!(e.to_string(), "train.epochs = 0: out of range; valid: 1 to 10000. Fix: e.g. train.epochs = 10");
        assert_eq!(e.as_flag("--epochs"), "--epochs 0: out of range; valid: 1 to 10000. Fix: e.g. --epochs 10");
        let e = in_interval("lr", f64::NAN, (0.0, false), (10.0, true), 0.003).unwrap_err();
        assert_eq!(e.to_string(), "lr = NaN: out of range; valid: a finite number in (0, 10]. Fix: e.g. lr = 0.003");
        assert!(in_interval("lr", -1.0, (0.0, false), (10.0, true), 0.003).is_err());
        assert!(in_interval("lr", f64::INFINITY, (0.0, false), (10.0, true), 0.003).is_err());
        assert!(in_interval("lr", 10.0, (0.0, false), (10.0, true), 0.003).is_ok());
        assert!(in_interval("beta1", 1.0, (0.0, true), (1.0, false), 0.9).is_err());
        assert!(in_interval("beta1", 0.0, (0.0, true), (1.0, false), 0.9).is_ok());
    }
}

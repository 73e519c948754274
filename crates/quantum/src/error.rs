//! Typed errors for bad model parameters.

/// A parameter given to a link model is outside its physical or protocol range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// A parameter that must be a finite number is NaN or infinite.
    #[error("parameter `{name}` must be a finite number, got {value}")]
    NotFinite {
        /// Literature name of the parameter.
        name: &'static str,
        /// The value given.
        value: f64,
    },
    /// A loss, length, rate or count that must not be negative is negative.
    #[error("parameter `{name}` must not be negative, got {value}")]
    Negative {
        /// Literature name of the parameter.
        name: &'static str,
        /// The value given.
        value: f64,
    },
    /// A parameter that must be strictly positive is zero or negative.
    #[error("parameter `{name}` must be greater than 0, got {value}")]
    NotPositive {
        /// Literature name of the parameter.
        name: &'static str,
        /// The value given.
        value: f64,
    },
    /// A probability (efficiency, error rate, sending probability) lies outside [0, 1].
    #[error("parameter `{name}` is a probability and must lie in [0, 1], got {value}")]
    NotProbability {
        /// Literature name of the parameter.
        name: &'static str,
        /// The value given.
        value: f64,
    },
    /// The decoy intensities are not ordered as the protocol requires.
    #[error("decoy intensities must satisfy {rule}; got {detail}")]
    IntensityOrder {
        /// The rule that is violated, e.g. `mu > nu`.
        rule: &'static str,
        /// The values given.
        detail: String,
    },
    /// Any other parameter outside its allowed range.
    #[error("parameter `{name}` = {value} is out of range: {reason}")]
    OutOfRange {
        /// Literature name of the parameter.
        name: &'static str,
        /// The value given.
        value: f64,
        /// What the allowed range is.
        reason: &'static str,
    },
}

/// Shorthand result type of this crate.
pub type Result<T> = std::result::Result<T, ModelError>;

pub(crate) fn finite(name: &'static str, value: f64) -> Result<f64> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(ModelError::NotFinite { name, value })
    }
}

pub(crate) fn non_negative(name: &'static str, value: f64) -> Result<f64> {
    finite(name, value)?;
    if value < 0.0 {
        Err(ModelError::Negative { name, value })
    } else {
        Ok(value)
    }
}

pub(crate) fn positive(name: &'static str, value: f64) -> Result<f64> {
    finite(name, value)?;
    if value <= 0.0 {
        Err(ModelError::NotPositive { name, value })
    } else {
        Ok(value)
    }
}

pub(crate) fn probability(name: &'static str, value: f64) -> Result<f64> {
    finite(name, value)?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(ModelError::NotProbability { name, value })
    }
}

pub(crate) fn open_probability(name: &'static str, value: f64) -> Result<f64> {
    probability(name, value)?;
    if value == 0.0 || value == 1.0 {
        Err(ModelError::OutOfRange {
            name,
            value,
            reason: "must lie strictly between 0 and 1",
        })
    } else {
        Ok(value)
    }
}

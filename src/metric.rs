//! Distance metrics.

use serde::{Deserialize, Serialize};

/// How closeness is measured. Scores returned to users are always "higher is closer".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Cosine similarity; vectors are normalised at build time.
    Cosine,
    /// Euclidean distance.
    L2,
    /// Inner product (maximum inner product search).
    Dot,
}

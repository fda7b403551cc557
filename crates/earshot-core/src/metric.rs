//! Distance metrics.

use serde::{Deserialize, Serialize};

/// How closeness is measured. Scores returned to users are always "higher is closer".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Cosine similarity; vectors are normalised at build time.
    Cosine,
    /// Euclidean distance.
    L2,
    /// Inner product (maximum inner product search).
    Dot,
}

impl Metric {
    /// Every metric, in the order the CLI and the API document them.
    pub const ALL: [Metric; 3] = [Metric::Cosine, Metric::L2, Metric::Dot];

    /// The lowercase name used on the command line, in the manifest and over HTTP.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Cosine => "cosine",
            Metric::L2 => "l2",
            Metric::Dot => "dot",
        }
    }
}

impl std::str::FromStr for Metric {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Metric::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("unknown metric {s:?} (expected cosine, l2 or dot)"))
    }
}

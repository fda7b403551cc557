//! The topology file: which shard servers answer for which collection.
//!
//! ```toml
//! [collections.tracks]
//! # One list per shard, in shard order (shard I of N = the I-th list); each lists the
//! # shard's replicas: fixed `http://HOST:PORT` addresses, or `dns://NAME:PORT`, a name
//! # re-resolved every few seconds whose every address is a replica (a Kubernetes headless
//! # Service lists every ready pod).
//! shards = [["http://10.0.0.2:7700", "http://10.0.0.3:7700"], ["dns://tracks-1.earshot:7700"]]
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use serde::Deserialize;

/// Where a shard's replicas are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// One replica at `HOST:PORT` (an IP address or a name the connector resolves).
    Fixed(String),
    /// Every address `NAME` resolves to, on `port`, re-resolved periodically.
    Dns { name: String, port: u16 },
}

impl Source {
    pub fn parse(url: &str) -> anyhow::Result<Source> {
        let (scheme, rest) = url.split_once("://").with_context(|| {
            format!("{url:?} is not a URL (http://HOST:PORT or dns://NAME:PORT)")
        })?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
            bail!("{url:?}: only HOST:PORT may follow the scheme (no path, query or user)");
        }
        let (host, port) = rest
            .rsplit_once(':')
            .with_context(|| format!("{url:?} has no port"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .with_context(|| format!("{url:?}: the port must be 1…65535"))?;
        if host.is_empty() {
            bail!("{url:?} has no host");
        }
        match scheme {
            "http" => Ok(Source::Fixed(format!("{host}:{port}"))),
            "dns" => {
                if host.starts_with('[') {
                    bail!("{url:?}: dns:// takes a name, not an address (use http://)");
                }
                Ok(Source::Dns {
                    name: host.to_string(),
                    port,
                })
            }
            "https" => bail!(
                "{url:?}: https to shard servers is not supported (use http:// inside the cluster)"
            ),
            other => bail!("{url:?}: unknown scheme {other:?} (http or dns)"),
        }
    }
}

/// The parsed topology: per collection, per shard, its replica sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub collections: BTreeMap<String, Vec<Vec<Source>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileForm {
    collections: BTreeMap<String, CollectionForm>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CollectionForm {
    shards: Vec<Vec<String>>,
}

impl Topology {
    pub fn load(path: &Path) -> anyhow::Result<Topology> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the topology file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("topology file {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Topology> {
        let form: FileForm = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        if form.collections.is_empty() {
            bail!("no collections: add a [collections.NAME] table with `shards = [[…], …]`");
        }
        let mut collections = BTreeMap::new();
        for (name, c) in form.collections {
            if let Err(problem) = earshot_core::layout::check_name(&name) {
                bail!("collection name {name:?} {problem}");
            }
            if c.shards.is_empty() {
                bail!("collection {name:?} lists no shards");
            }
            if c.shards.len() > earshot_core::shard::MAX_SHARDS as usize {
                bail!(
                    "collection {name:?} lists {} shards (at most {})",
                    c.shards.len(),
                    earshot_core::shard::MAX_SHARDS
                );
            }
            let mut shards = Vec::with_capacity(c.shards.len());
            for (i, replicas) in c.shards.iter().enumerate() {
                if replicas.is_empty() {
                    bail!("collection {name:?}: shard {i} lists no replicas");
                }
                let mut sources = Vec::with_capacity(replicas.len());
                for r in replicas {
                    let s = Source::parse(r)
                        .with_context(|| format!("collection {name:?}, shard {i}"))?;
                    if sources.contains(&s) {
                        bail!("collection {name:?}, shard {i}: {r:?} is listed twice");
                    }
                    sources.push(s);
                }
                shards.push(sources);
            }
            collections.insert(name, shards);
        }
        Ok(Topology { collections })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let t = Topology::parse(
            r#"
            [collections.tracks]
            shards = [["http://10.0.0.2:7700","http://10.0.0.3:7700"], ["dns://tracks-1.earshot:7700"]]
            [collections.creators]
            shards = [["http://localhost:7701/"]]
            "#,
        )
        .unwrap();
        assert_eq!(
            t.collections["tracks"],
            vec![
                vec![
                    Source::Fixed("10.0.0.2:7700".into()),
                    Source::Fixed("10.0.0.3:7700".into())
                ],
                vec![Source::Dns {
                    name: "tracks-1.earshot".into(),
                    port: 7700
                }]
            ]
        );
        assert_eq!(
            t.collections["creators"],
            vec![vec![Source::Fixed("localhost:7701".into())]]
        );
        assert_eq!(
            Source::parse("http://[::1]:80").unwrap(),
            Source::Fixed("[::1]:80".into())
        );
    }

    #[test]
    fn refuses_what_it_cannot_route() {
        for (text, words) in [
            ("", "missing field `collections`"),
            ("[collections]", "no collections"),
            ("[collections.t]\nshards = []", "no shards"),
            (
                "[collections.t]\nshards = [[]]",
                "shard 0 lists no replicas",
            ),
            (
                "[collections.t]\nshards = [[\"10.0.0.1:7700\"]]",
                "not a URL",
            ),
            ("[collections.t]\nshards = [[\"https://a:1\"]]", "https"),
            (
                "[collections.t]\nshards = [[\"ftp://a:1\"]]",
                "unknown scheme",
            ),
            ("[collections.t]\nshards = [[\"http://a\"]]", "no port"),
            ("[collections.t]\nshards = [[\"http://a:0\"]]", "port"),
            ("[collections.t]\nshards = [[\"http://a:1/v1\"]]", "no path"),
            (
                "[collections.t]\nshards = [[\"http://a:1\", \"http://a:1\"]]",
                "twice",
            ),
            (
                "[collections.\".x\"]\nshards = [[\"http://a:1\"]]",
                "collection name",
            ),
            (
                "[collections.t]\nshards = [[\"http://a:1\"]]\nreplicas = 2",
                "unknown field",
            ),
        ] {
            let e = format!("{:#}", Topology::parse(text).unwrap_err());
            assert!(e.contains(words), "{text:?}: {e}");
        }
    }
}

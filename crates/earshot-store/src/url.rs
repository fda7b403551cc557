//! Store URLs: `s3://bucket/prefix` and `file:///abs/path`, opened as an object_store.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjPath;
use object_store::{ClientOptions, ObjectStore, RetryConfig};

use crate::error::StoreError;
use crate::local::LocalCas;

/// A parsed store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Parsed {
    S3 { bucket: String, prefix: String },
    File { root: std::path::PathBuf },
}

fn bad(url: &str, problem: impl Into<String>) -> StoreError {
    StoreError::BadUrl {
        url: url.to_string(),
        problem: problem.into(),
    }
}

pub(crate) fn parse(url: &str) -> Result<Parsed, StoreError> {
    if let Some(rest) = url.strip_prefix("s3://") {
        let rest = rest.trim_end_matches('/');
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad(url, "the bucket name is missing"));
        }
        if !bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        {
            return Err(bad(
                url,
                format!(
                    "{bucket:?} is not an S3 bucket name (lowercase letters, digits, '-', '.')"
                ),
            ));
        }
        check_prefix(url, prefix)?;
        return Ok(Parsed::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        });
    }
    if let Some(rest) = url.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(bad(
                url,
                "a file URL needs an absolute path: file:///srv/earshot (three slashes)",
            ));
        }
        if rest.contains('%') || rest.contains('?') || rest.contains('#') {
            return Err(bad(url, "escapes, queries and fragments are not supported"));
        }
        let root = std::path::PathBuf::from(rest.trim_end_matches('/'));
        let root = if root.as_os_str().is_empty() {
            std::path::PathBuf::from("/")
        } else {
            root
        };
        return Ok(Parsed::File { root });
    }
    match url.split_once("://") {
        Some((scheme, _)) => Err(bad(url, format!("the scheme {scheme:?} is not supported"))),
        None => Err(bad(url, "not a URL")),
    }
}

fn check_prefix(url: &str, prefix: &str) -> Result<(), StoreError> {
    if prefix.is_empty() {
        return Ok(());
    }
    for part in prefix.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(bad(
                url,
                format!("the prefix {prefix:?} has an empty or relative part"),
            ));
        }
    }
    Ok(())
}

/// `URL/NAME` → (`URL`, `NAME`): the store and collection of `earshot versions --store`
/// and `earshot activate --store`.
pub fn split_collection_url(url: &str) -> anyhow::Result<(String, String)> {
    let trimmed = url.trim_end_matches('/');
    let (store, name) = trimmed
        .rsplit_once('/')
        .ok_or_else(|| bad(url, "expected URL/NAME, e.g. s3://bucket/prefix/tracks"))?;
    if let Err(problem) = earshot_core::layout::check_name(name) {
        return Err(bad(url, format!("the collection name {name:?} {problem}")).into());
    }
    let store = if store == "file://" {
        "file:///".to_string()
    } else {
        store.to_string()
    };
    parse(&store).map_err(|_| {
        bad(
            url,
            "expected URL/NAME with the collection name after the store URL, e.g. s3://bucket/prefix/tracks or file:///srv/store/tracks",
        )
    })?;
    Ok((store, name.to_string()))
}

/// How long object_store retries a failing request before the operation fails. Kept short:
/// the callers (the replica's poll, the CLI) retry with their own backoff, and a store that
/// is down must not stall a poll for minutes.
fn retry() -> RetryConfig {
    RetryConfig {
        max_retries: 3,
        retry_timeout: Duration::from_secs(15),
        ..Default::default()
    }
}

/// Opens `url` as an object store and the key prefix inside it. `env` overrides the process
/// environment's `AWS_*` variables (tests point a store at a local server this way).
pub(crate) fn open(
    url: &str,
    env: &[(String, String)],
) -> anyhow::Result<(Arc<dyn ObjectStore>, ObjPath)> {
    match parse(url)? {
        Parsed::S3 { bucket, prefix } => {
            install_tls_provider();
            let mut builder = AmazonS3Builder::new()
                .with_client_options(
                    ClientOptions::new()
                        .with_connect_timeout(Duration::from_secs(5))
                        // Downloads go in ranges of at most 64 MiB (fetch.rs).
                        .with_timeout(Duration::from_secs(300)),
                )
                .with_retry(retry());
            let from_env = std::env::vars().filter(|(k, _)| k.starts_with("AWS_"));
            for (key, value) in from_env.chain(env.iter().cloned()) {
                if let Ok(k) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                    builder = builder.with_config(k, value);
                }
            }
            let s3 = builder.with_bucket_name(&bucket).build().map_err(|e| {
                bad(
                    url,
                    format!("cannot configure S3 from the AWS_* environment: {e}"),
                )
            })?;
            Ok((Arc::new(s3), ObjPath::from(prefix.as_str())))
        }
        Parsed::File { root } => {
            std::fs::create_dir_all(&root)
                .map_err(|e| bad(url, format!("cannot create {}: {e}", root.display())))?;
            Ok((Arc::new(LocalCas::new(&root)?), ObjPath::default()))
        }
    }
}

/// rustls is built without a default crypto provider (ring is used rather than aws-lc-rs:
/// no second C build); install it once per process.
fn install_tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another provider was installed first: that one serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        assert_eq!(
            parse("s3://bucket/a/b/").unwrap(),
            Parsed::S3 {
                bucket: "bucket".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            parse("s3://bucket").unwrap(),
            Parsed::S3 {
                bucket: "bucket".into(),
                prefix: "".into()
            }
        );
        assert_eq!(
            parse("file:///srv/x/").unwrap(),
            Parsed::File {
                root: "/srv/x".into()
            }
        );
        for bad in [
            "gs://b/x",
            "s3://",
            "s3://Bucket/x",
            "s3://b//x",
            "s3://b/../x",
            "file://relative/x",
            "/srv/x",
            "",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("accepted: s3://"), "{bad}: {e}");
        }
    }

    #[test]
    fn splits_collection_urls() {
        assert_eq!(
            split_collection_url("s3://b/p/tracks").unwrap(),
            ("s3://b/p".into(), "tracks".into())
        );
        assert_eq!(
            split_collection_url("s3://b/tracks/").unwrap(),
            ("s3://b".into(), "tracks".into())
        );
        assert_eq!(
            split_collection_url("file:///srv/store/tracks").unwrap(),
            ("file:///srv/store".into(), "tracks".into())
        );
        assert_eq!(
            split_collection_url("file:///tracks").unwrap(),
            ("file:///".into(), "tracks".into())
        );
        for bad in ["s3://tracks", "tracks", "s3://b/.hidden", "gs://b/tracks"] {
            assert!(split_collection_url(bad).is_err(), "{bad}");
        }
    }
}

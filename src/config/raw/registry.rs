//! `[registry]` as written, and its validation: the container registry the multi-arch guard reads
//! image manifests from (GitHub's is `https://ghcr.io`; GHES serves `https://containers.HOST`).

use std::time::Duration;

use serde::Deserialize;

use super::validate::{invalid, nonzero, split_url};
use crate::config::{ConfigError, RegistryConfig};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegistry {
    #[serde(default = "default_base_url")]
    base_url: String,
    #[serde(default)]
    allow_plain_http: bool,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    connect_timeout: Duration,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    timeout: Duration,
    #[serde(default = "default_manifest_cache_bytes")]
    manifest_cache_bytes: u64,
    #[serde(default = "default_max_reads")]
    max_reads_per_decision: u32,
}

impl Default for RawRegistry {
    fn default() -> Self {
        Self {
            base_url: default_base_url(),
            allow_plain_http: false,
            connect_timeout: default_connect_timeout(),
            timeout: default_timeout(),
            manifest_cache_bytes: default_manifest_cache_bytes(),
            max_reads_per_decision: default_max_reads(),
        }
    }
}

fn default_base_url() -> String {
    "https://ghcr.io".to_owned()
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_manifest_cache_bytes() -> u64 {
    16 * 1024 * 1024
}
fn default_max_reads() -> u32 {
    500
}

impl RawRegistry {
    pub(super) fn validate(self) -> Result<RegistryConfig, ConfigError> {
        let (origin, prefix) = split_url(&self.base_url, "registry.base_url")?;
        if origin.starts_with("http://") && !self.allow_plain_http {
            return Err(invalid(
                "registry.base_url",
                "plain http:// needs `registry.allow_plain_http = true` (meant for the simulator only)",
            ));
        }
        nonzero(self.connect_timeout, "registry.connect_timeout")?;
        nonzero(self.timeout, "registry.timeout")?;
        if self.manifest_cache_bytes < 64 * 1024 {
            return Err(invalid(
                "registry.manifest_cache_bytes",
                "must be at least 64 KiB (65536)",
            ));
        }
        if self.max_reads_per_decision == 0 {
            return Err(invalid(
                "registry.max_reads_per_decision",
                "must be at least 1",
            ));
        }
        Ok(RegistryConfig {
            origin,
            prefix,
            allow_plain_http: self.allow_plain_http,
            connect_timeout: self.connect_timeout,
            timeout: self.timeout,
            manifest_cache_bytes: self.manifest_cache_bytes,
            max_reads_per_decision: self.max_reads_per_decision,
        })
    }
}

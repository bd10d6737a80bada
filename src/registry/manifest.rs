//! Image manifests as the multi-arch guard needs them: an index (OCI image index or Docker
//! manifest list) and the digests it references, or a single-platform image manifest.
//!
//! A manifest is fetched by digest, so its bytes are checked against that digest before they are
//! parsed: a registry (or anything between) cannot make us cache a wrong answer under a digest.

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// The `Accept` value of every manifest read: the four types above.
pub(super) const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// Manifests larger than this are refused (the OCI spec asks registries to take 4 MiB).
pub(super) const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// A parsed manifest: what it references, nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// An index (with children) or a single image.
    pub kind: Kind,
    /// The manifests an index references, in its order; empty for an image.
    pub children: Vec<Child>,
}

/// Index or image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// OCI image index or Docker manifest list.
    Index,
    /// OCI image manifest or Docker v2 manifest.
    Image,
}

/// One manifest an index references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    /// `sha256:...`.
    pub digest: String,
    /// Its media type, as the index states it.
    pub media_type: String,
    /// What it is to the image, for the refusal message.
    pub role: Role,
}

/// Why an index references a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The image for one platform (`linux/arm64`, `linux/arm/v7`).
    Platform(String),
    /// A build attestation (provenance, SBOM) that buildx attaches to the index.
    Attestation,
    /// A nested index.
    Index,
}

/// Why a manifest cannot be used. Fail closed: the guard refuses the delete.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The bytes do not hash to the digest they were fetched by.
    #[error("its content does not match its digest")]
    DigestMismatch,
    /// The digest is not `sha256:` and 64 lowercase hex digits.
    #[error("{0:?} is not a sha256 digest")]
    BadDigest(String),
    /// Not JSON, or not a manifest's shape.
    #[error("it is not a valid manifest")]
    Json(#[source] serde_json::Error),
    /// A media type the guard does not know (schema 1, an artifact): it cannot tell what it holds.
    #[error("unsupported media type {0:?}")]
    MediaType(String),
    /// Not schema version 2.
    #[error("unsupported schemaVersion")]
    SchemaVersion,
    /// Larger than [`MAX_MANIFEST_BYTES`].
    #[error("larger than 4 MiB")]
    TooLarge,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<u32>,
    media_type: Option<String>,
    manifests: Option<Vec<RawDescriptor>>,
    config: Option<serde_json::Value>,
    layers: Option<Vec<serde_json::Value>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: String,
    digest: String,
    platform: Option<RawPlatform>,
    #[serde(default)]
    annotations: std::collections::HashMap<String, String>,
}

#[derive(Deserialize)]
struct RawPlatform {
    architecture: String,
    os: String,
    variant: Option<String>,
}

// === impl Manifest ===

impl Manifest {
    /// Checks `bytes` against `digest` and parses them; `content_type` is the response's
    /// `Content-Type`, used when the manifest does not state its own `mediaType`.
    pub fn parse(
        digest: &str,
        content_type: Option<&str>,
        bytes: &[u8],
    ) -> Result<Self, ManifestError> {
        check_digest(digest)?;
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge);
        }
        if format!("sha256:{}", hex::encode(Sha256::digest(bytes))) != digest {
            return Err(ManifestError::DigestMismatch);
        }
        let raw: RawManifest = serde_json::from_slice(bytes).map_err(ManifestError::Json)?;
        if raw.schema_version != Some(2) {
            return Err(ManifestError::SchemaVersion);
        }
        let stated = raw
            .media_type
            .as_deref()
            .or_else(|| content_type.map(|c| c.split(';').next().unwrap_or_default().trim()));
        let kind = match stated {
            Some(OCI_INDEX | DOCKER_LIST) => Kind::Index,
            Some(OCI_MANIFEST | DOCKER_MANIFEST) => Kind::Image,
            // OCI lets a manifest omit mediaType; its fields then say what it is.
            None | Some("application/json") if raw.manifests.is_some() => Kind::Index,
            None | Some("application/json") if raw.config.is_some() && raw.layers.is_some() => {
                Kind::Image
            }
            other => return Err(ManifestError::MediaType(other.unwrap_or("").to_owned())),
        };
        if kind == Kind::Image {
            return Ok(Self {
                kind,
                children: Vec::new(),
            });
        }
        let children = raw
            .manifests
            .unwrap_or_default()
            .into_iter()
            .map(Child::from_raw)
            .collect::<Result<_, _>>()?;
        Ok(Self { kind, children })
    }

    /// Approximate bytes held, for the cache's weigher.
    pub fn weight(&self) -> u32 {
        let children: usize = self
            .children
            .iter()
            .map(|c| 96 + c.digest.len() + c.media_type.len())
            .sum();
        u32::try_from(128 + children).unwrap_or(u32::MAX)
    }
}

// === impl Child ===

impl Child {
    fn from_raw(raw: RawDescriptor) -> Result<Self, ManifestError> {
        check_digest(&raw.digest)?;
        let attestation = raw
            .annotations
            .get("vnd.docker.reference.type")
            .is_some_and(|t| t == "attestation-manifest");
        let role = if matches!(raw.media_type.as_str(), OCI_INDEX | DOCKER_LIST) {
            Role::Index
        } else if attestation {
            Role::Attestation
        } else {
            match raw.platform {
                Some(p) if p.os == "unknown" && p.architecture == "unknown" => Role::Attestation,
                Some(p) => Role::Platform(match p.variant {
                    Some(variant) => format!("{}/{}/{variant}", p.os, p.architecture),
                    None => format!("{}/{}", p.os, p.architecture),
                }),
                None => Role::Platform("unknown platform".to_owned()),
            }
        };
        Ok(Self {
            digest: raw.digest,
            media_type: raw.media_type,
            role,
        })
    }
}

// === impl Role ===

impl Role {
    /// "the linux/arm64 platform manifest", "the attestation manifest", "a nested index".
    pub fn describe(&self) -> String {
        match self {
            Self::Platform(platform) => format!("the {platform} platform manifest"),
            Self::Attestation => "the attestation manifest".to_owned(),
            Self::Index => "a nested index".to_owned(),
        }
    }
}

/// `sha256:` and 64 lowercase hex digits: the only digests the guard can verify.
pub fn check_digest(digest: &str) -> Result<(), ManifestError> {
    let ok = digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if ok {
        Ok(())
    } else {
        Err(ManifestError::BadDigest(digest.chars().take(80).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(bytes: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
    }

    #[test]
    fn an_index_lists_platforms_and_attestations() {
        let child = digest_of(b"a");
        let att = digest_of(b"b");
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
            {{"mediaType":"{OCI_MANIFEST}","digest":"{child}","size":1,"platform":{{"architecture":"arm","os":"linux","variant":"v7"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"{att}","size":1,"platform":{{"architecture":"unknown","os":"unknown"}},
              "annotations":{{"vnd.docker.reference.type":"attestation-manifest"}}}}]}}"#
        );
        let m = Manifest::parse(&digest_of(body.as_bytes()), None, body.as_bytes()).unwrap();
        assert_eq!(m.kind, Kind::Index);
        assert_eq!(m.children[0].role, Role::Platform("linux/arm/v7".into()));
        assert_eq!(m.children[1].role, Role::Attestation);
    }

    #[test]
    fn wrong_digests_and_unknown_types_fail() {
        let body = br#"{"schemaVersion":2,"mediaType":"application/vnd.example+json"}"#;
        assert!(matches!(
            Manifest::parse(&digest_of(b"other"), None, body),
            Err(ManifestError::DigestMismatch)
        ));
        assert!(matches!(
            Manifest::parse(&digest_of(body), None, body),
            Err(ManifestError::MediaType(_))
        ));
        assert!(matches!(
            Manifest::parse("sha512:abc", None, body),
            Err(ManifestError::BadDigest(_))
        ));
        let not_json = b"{not json";
        assert!(matches!(
            Manifest::parse(&digest_of(not_json), None, not_json),
            Err(ManifestError::Json(_))
        ));
    }
}

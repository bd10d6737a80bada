//! The registry side of the simulator (OCI distribution API), for the multi-arch guard:
//! `GET`/`HEAD /v2/<owner>/<package>/manifests/<digest or tag>` for its container versions, the
//! token flow (`401` with a `Bearer` challenge, `GET /token` checking Basic auth with the org
//! token as password), and injected registry faults.
//!
//! Manifests are generated here and stored with their package ([`SimManifest`]); a container
//! version's `name` is the SHA-256 of its manifest's bytes, as at GitHub. A deleted version's
//! manifest is gone (404 `MANIFEST_UNKNOWN`), so a deleted child breaks its index as it would.

use std::collections::VecDeque;
use std::io;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::state::SimState;
use crate::registry::{OCI_INDEX, OCI_MANIFEST};

/// `service` of the token challenge.
const SERVICE: &str = "sim-registry";

/// A manifest the simulated registry serves.
#[derive(Clone, Debug)]
pub(super) struct SimManifest {
    pub(super) media_type: &'static str,
    pub(super) body: String,
}

/// What goes wrong with the next registry requests (`SimHandle::inject_registry`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryFault {
    /// Drop the connection unanswered: the registry is down.
    Down,
    /// Answer with this status and a distribution-spec error body.
    Status(StatusCode),
    /// Answer 200 with a manifest body that is not JSON.
    BadJson,
}

/// Pending registry faults with their remaining counts.
#[derive(Debug, Default)]
pub(super) struct RegistryFaults(VecDeque<(RegistryFault, u32)>);

// === impl RegistryFaults ===

impl RegistryFaults {
    pub(super) fn push(&mut self, fault: RegistryFault, times: u32) {
        if times > 0 {
            self.0.push_back((fault, times));
        }
    }

    fn take(&mut self) -> Option<RegistryFault> {
        let front = self.0.front_mut()?;
        front.1 -= 1;
        let fault = front.0.clone();
        if front.1 == 0 {
            self.0.pop_front();
        }
        Some(fault)
    }
}

// === generated manifests ===

/// A single-platform image manifest; `seed` makes it unique. Returns (digest, manifest).
pub(super) fn image(seed: &str, platform: Option<(&str, &str)>) -> (String, SimManifest) {
    let blob = |what: &str| {
        format!(
            "sha256:{}",
            hex::encode(Sha256::digest(format!("{seed}:{what}")))
        )
    };
    let mut config = json!({
        "mediaType": "application/vnd.oci.image.config.v1+json",
        "digest": blob("config"),
        "size": 1469,
    });
    if let Some((os, arch)) = platform {
        config["annotations"] = json!({ "org.example.platform": format!("{os}/{arch}") });
    }
    let body = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": blob("layer"),
            "size": 3_208_942,
        }],
    });
    manifest(OCI_MANIFEST, &body)
}

/// A buildx-style attestation manifest for `subject`.
pub(super) fn attestation(seed: &str, subject: &str) -> (String, SimManifest) {
    let blob = format!(
        "sha256:{}",
        hex::encode(Sha256::digest(format!("{seed}:provenance")))
    );
    let body = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blob, "size": 167},
        "layers": [{
            "mediaType": "application/vnd.in-toto+json",
            "digest": blob,
            "size": 1234,
            "annotations": {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"},
        }],
        "annotations": {"vnd.docker.reference.digest": subject},
    });
    manifest(OCI_MANIFEST, &body)
}

/// An image index over two platform images and the attestation of the first.
pub(super) fn index(amd64: &str, arm64: &str, attestation: &str) -> (String, SimManifest) {
    let body = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": amd64, "size": 1024,
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": OCI_MANIFEST, "digest": arm64, "size": 1024,
             "platform": {"architecture": "arm64", "os": "linux"}},
            {"mediaType": OCI_MANIFEST, "digest": attestation, "size": 840,
             "platform": {"architecture": "unknown", "os": "unknown"},
             "annotations": {"vnd.docker.reference.type": "attestation-manifest",
                             "vnd.docker.reference.digest": amd64}},
        ],
    });
    manifest(OCI_INDEX, &body)
}

fn manifest(media_type: &'static str, body: &serde_json::Value) -> (String, SimManifest) {
    let body = body.to_string();
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(body.as_bytes())));
    (digest, SimManifest { media_type, body })
}

// === serving ===

/// Answers `/v2/...` and `/token`; `None` for every other path (the Packages API).
pub(super) fn handle<B>(
    state: &SimState,
    req: &Request<B>,
) -> Option<io::Result<Response<Full<Bytes>>>> {
    let path = req.uri().path();
    if path != "/token" && !path.starts_with("/v2/") {
        return None;
    }
    let fault = state.registry_faults().take();
    let response = match fault {
        Some(RegistryFault::Down) => {
            return Some(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "injected registry outage",
            )));
        }
        Some(RegistryFault::Status(status)) => error(status, "UNAVAILABLE", "injected fault"),
        Some(RegistryFault::BadJson) => {
            let mut response =
                Response::new(Full::new(Bytes::from_static(b"{\"schemaVersion\": 2, ")));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(OCI_INDEX));
            response
        }
        None if path == "/token" => token(state, req),
        None => manifest_answer(state, req, path),
    };
    Some(Ok(response))
}

/// `GET /token?service=..&scope=..` with Basic auth whose password is the org token.
fn token<B>(state: &SimState, req: &Request<B>) -> Response<Full<Bytes>> {
    let password = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(decode_base64)
        .and_then(|plain| plain.split_once(':').map(|(_, p)| p.to_owned()));
    if password.as_deref() != Some(state.token.as_str()) {
        return error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "bad credentials");
    }
    let scope = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("scope="))
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    let body = json!({"token": registry_token(state, &scope), "expires_in": 300});
    json_response(StatusCode::OK, &body)
}

/// The token the realm hands out for `scope` (derived, so nothing is stored).
fn registry_token(state: &SimState, scope: &str) -> String {
    let digest = Sha256::digest(format!("{}|{scope}", state.token));
    format!("simreg_{}", hex::encode(&digest[..16]))
}

fn manifest_answer<B>(state: &SimState, req: &Request<B>, path: &str) -> Response<Full<Bytes>> {
    let Some((repository, reference)) = path
        .strip_prefix("/v2/")
        .and_then(|rest| rest.rsplit_once("/manifests/"))
    else {
        return error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", "unknown path");
    };
    let scope = format!("repository:{repository}:pull");
    let expected = format!("Bearer {}", registry_token(state, &scope));
    let authorized = req
        .headers()
        .get(AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == expected.as_bytes());
    if !authorized {
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "authentication required",
        );
        let challenge = format!(
            "Bearer realm=\"{}/token\",service=\"{SERVICE}\",scope=\"{scope}\"",
            state.base_url
        );
        if let Ok(value) = HeaderValue::try_from(challenge) {
            response.headers_mut().insert(WWW_AUTHENTICATE, value);
        }
        return response;
    }
    let found = state.read_data().manifest(repository, reference);
    let Some((digest, manifest)) = found else {
        return error(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            "manifest unknown",
        );
    };
    let body = if req.method() == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from(manifest.body.clone())
    };
    let mut response = Response::new(Full::new(body));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(manifest.media_type));
    headers.insert(
        http::header::CONTENT_LENGTH,
        HeaderValue::from(manifest.body.len()),
    );
    if let Ok(value) = HeaderValue::try_from(digest) {
        headers.insert("docker-content-digest", value);
    }
    response
}

/// A distribution-spec error body.
fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json_response(
        status,
        &json!({"errors": [{"code": code, "message": message}]}),
    )
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Standard base64 (with or without padding) to UTF-8 text.
fn decode_base64(text: &str) -> Option<String> {
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for byte in text.trim().bytes().filter(|b| *b != b'=') {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        bits = bits << 6 | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn decodes_basic_credentials() {
        assert_eq!(super::decode_base64("dTpwYXNz").as_deref(), Some("u:pass"));
        assert_eq!(super::decode_base64("Zm9vYg==").as_deref(), Some("foob"));
        assert_eq!(super::decode_base64("!!"), None);
    }
}

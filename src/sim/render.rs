//! JSON bodies in the spec's shapes: `simple-user`, `package`, `package-version`,
//! `nullable-minimal-repository` (trimmed) and `basic-error`.
//!
//! Structs with `Serialize` keep GitHub's field order (a `serde_json::Value` map would sort keys)
//! and are cheap to write, which matters when the simulator is a benchmark upstream.

use serde::Serialize;

use super::dataset::{Owner, OwnerKind, Package, Version};
use super::route::encode_segment;

/// Documentation link of most error bodies.
pub(super) const DOCS_REST: &str = "https://docs.github.com/rest";

/// `basic-error`.
#[derive(Serialize)]
pub(super) struct ErrorJson<'a> {
    pub(super) message: &'a str,
    pub(super) documentation_url: &'a str,
    pub(super) status: String,
}

/// `simple-user`, for orgs and users alike.
#[derive(Serialize)]
pub(super) struct UserJson {
    login: String,
    id: u64,
    node_id: String,
    avatar_url: String,
    gravatar_id: &'static str,
    url: String,
    html_url: String,
    followers_url: String,
    following_url: String,
    gists_url: String,
    starred_url: String,
    subscriptions_url: String,
    organizations_url: String,
    repos_url: String,
    events_url: String,
    received_events_url: String,
    #[serde(rename = "type")]
    kind: &'static str,
    site_admin: bool,
}

/// `nullable-minimal-repository`, trimmed to the fields a client is likely to read.
#[derive(Serialize)]
pub(super) struct RepositoryJson {
    id: u64,
    node_id: String,
    name: String,
    full_name: String,
    private: bool,
    owner: UserJson,
    html_url: String,
    description: Option<String>,
    fork: bool,
    url: String,
}

/// `package`.
#[derive(Serialize)]
pub(super) struct PackageJson<'a> {
    id: u64,
    name: &'a str,
    package_type: &'a str,
    owner: UserJson,
    version_count: usize,
    visibility: &'a str,
    url: String,
    created_at: &'a str,
    updated_at: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    repository: Option<RepositoryJson>,
    html_url: String,
}

/// `package-version`.
#[derive(Serialize)]
pub(super) struct VersionJson<'a> {
    id: u64,
    name: &'a str,
    url: String,
    package_html_url: String,
    created_at: &'a str,
    updated_at: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted_at: Option<&'a str>,
    html_url: String,
    metadata: MetadataJson<'a>,
}

/// `package-version.metadata`.
#[derive(Serialize)]
struct MetadataJson<'a> {
    package_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<ContainerJson<'a>>,
}

#[derive(Serialize)]
struct ContainerJson<'a> {
    tags: &'a [String],
}

/// A `simple-user` for `owner`; API URLs on `base`.
pub(super) fn user(base: &str, owner: &Owner) -> UserJson {
    let (login, id) = (&owner.login, owner.id);
    let api = format!("{base}/users/{login}");
    let (kind, node) = match owner.kind {
        OwnerKind::Organization => ("Organization", format!("012:Organization{id}")),
        OwnerKind::User => ("User", format!("04:User{id}")),
    };
    UserJson {
        login: login.clone(),
        id,
        node_id: base64(node.as_bytes()),
        avatar_url: format!("https://avatars.githubusercontent.com/u/{id}?v=4"),
        gravatar_id: "",
        html_url: format!("https://github.com/{login}"),
        followers_url: format!("{api}/followers"),
        following_url: format!("{api}/following{{/other_user}}"),
        gists_url: format!("{api}/gists{{/gist_id}}"),
        starred_url: format!("{api}/starred{{/owner}}{{/repo}}"),
        subscriptions_url: format!("{api}/subscriptions"),
        organizations_url: format!("{api}/orgs"),
        repos_url: format!("{api}/repos"),
        events_url: format!("{api}/events{{/privacy}}"),
        received_events_url: format!("{api}/received_events"),
        url: api,
        kind,
        site_admin: false,
    }
}

/// A `package` for `pkg` of `owner`.
pub(super) fn package<'a>(base: &str, owner: &Owner, pkg: &'a Package) -> PackageJson<'a> {
    PackageJson {
        id: pkg.id,
        name: &pkg.name,
        package_type: &pkg.package_type,
        owner: user(base, owner),
        version_count: pkg.active_count(),
        visibility: &pkg.visibility,
        url: package_api_url(base, owner, pkg),
        created_at: &pkg.created_at,
        updated_at: &pkg.updated_at,
        repository: pkg.repository_id.map(|id| repository(base, owner, pkg, id)),
        html_url: package_html_url(owner, pkg),
    }
}

/// A `package-version` for version `v` of `pkg`.
pub(super) fn version<'a>(
    base: &str,
    owner: &Owner,
    pkg: &'a Package,
    v: &'a Version,
) -> VersionJson<'a> {
    let package_html_url = match pkg.repository_id {
        Some(_) => format!(
            "https://github.com/{}/{}/packages/{}",
            owner.login,
            repo_name(pkg),
            pkg.id
        ),
        None => package_html_url(owner, pkg),
    };
    let html_url = match pkg.repository_id {
        Some(_) => format!("{package_html_url}?version={}", v.name),
        None => format!(
            "{}/{}",
            package_html_url.replacen("/package/", "/", 1),
            v.id
        ),
    };
    VersionJson {
        id: v.id,
        name: &v.name,
        url: format!("{}/versions/{}", package_api_url(base, owner, pkg), v.id),
        package_html_url,
        created_at: &v.created_at,
        updated_at: &v.created_at,
        deleted_at: v.deleted_at.as_deref(),
        html_url,
        metadata: MetadataJson {
            package_type: &pkg.package_type,
            container: v.tags.as_deref().map(|tags| ContainerJson { tags }),
        },
    }
}

/// `{base}/orgs/{org}/packages/{type}/{name}` or `{base}/users/{login}/...`.
fn package_api_url(base: &str, owner: &Owner, pkg: &Package) -> String {
    let scope = match owner.kind {
        OwnerKind::Organization => "orgs",
        OwnerKind::User => "users",
    };
    let name = encode_segment(&pkg.name);
    format!(
        "{base}/{scope}/{}/packages/{}/{name}",
        owner.login, pkg.package_type
    )
}

/// `https://github.com/orgs/{org}/packages/{type}/package/{name}` (or `/users/{login}/...`).
fn package_html_url(owner: &Owner, pkg: &Package) -> String {
    let scope = match owner.kind {
        OwnerKind::Organization => "orgs",
        OwnerKind::User => "users",
    };
    let name = encode_segment(&pkg.name);
    format!(
        "https://github.com/{scope}/{}/packages/{}/package/{name}",
        owner.login, pkg.package_type
    )
}

fn repository(base: &str, owner: &Owner, pkg: &Package, id: u64) -> RepositoryJson {
    let name = repo_name(pkg);
    let full_name = format!("{}/{name}", owner.login);
    RepositoryJson {
        id,
        node_id: base64(format!("010:Repository{id}").as_bytes()),
        private: pkg.visibility != "public",
        owner: user(base, owner),
        html_url: format!("https://github.com/{full_name}"),
        description: None,
        fork: false,
        url: format!("{base}/repos/{full_name}"),
        full_name,
        name,
    }
}

/// The backing repository's name: the package name with `/` made safe.
fn repo_name(pkg: &Package) -> String {
    pkg.name.replace('/', "-")
}

/// Standard base64 with padding (GitHub's legacy `node_id`s are base64 of `"04:User583231"`).
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::base64;

    #[test]
    fn node_ids_match_github_examples() {
        assert_eq!(
            base64(b"012:Organization9919"),
            "MDEyOk9yZ2FuaXphdGlvbjk5MTk="
        );
        assert_eq!(base64(b"04:User209477"), "MDQ6VXNlcjIwOTQ3Nw==");
    }
}

//! Path checks and the typed Packages API routes: the only requests that can reach GitHub.
//!
//! The org token may carry `repo` scope, so this module is the wall between clients and the rest of
//! api.github.com. A request is turned into a [`Route`] (an enum of the 27 Packages operations) or
//! refused; the upstream path is then *rebuilt* from the typed route, never copied from the client.
//!
//! Rules, applied in order:
//! 1. repeated slashes are merged (as nginx does), and a leading `/api/v3` (GHES clients) is dropped;
//! 2. every segment must be plain `[A-Za-z0-9._-]`: no percent-encoding at all, except `%2F` inside
//!    the package-name segment (container names such as `base/runtime`); so `%2e`, `%252e`, `%5c`,
//!    control characters and double encoding are all refused;
//! 3. `.` and `..` are refused as segments and as parts of a decoded package name;
//! 4. the segments must spell one operation of `endpoints.tsv` with the right method;
//! 5. query parameters are limited to those the operation defines, with validated values.

use std::fmt::{self, Write as _};

use http::Method;

use crate::error::ProxyError;

mod query;

pub use query::Query;

/// Longest org or user login GitHub allows.
const MAX_LOGIN: usize = 39;
/// Longest package name we accept (GitHub's limit is lower for most registries).
const MAX_NAME: usize = 255;

/// Whose packages a route addresses.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Owner {
    /// `/orgs/{org}`; the login as the client spelled it.
    Org(String),
    /// `/users/{username}`.
    User(String),
    /// `/user`: the org token's own user.
    AuthenticatedUser,
}

/// A package registry type (the `package_type` path segment or query parameter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PackageType {
    /// npm
    Npm,
    /// Maven and Gradle
    Maven,
    /// RubyGems
    Rubygems,
    /// The old docker.pkg.github.com registry
    Docker,
    /// NuGet
    Nuget,
    /// ghcr.io
    Container,
}

/// The nine operation shapes; with [`Owner`] they make the 27 operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `GET {owner}/docker/conflicts`
    DockerConflicts,
    /// `GET {owner}/packages`
    ListPackages,
    /// `GET {owner}/packages/{type}/{name}`
    GetPackage,
    /// `DELETE {owner}/packages/{type}/{name}`
    DeletePackage,
    /// `POST {owner}/packages/{type}/{name}/restore`
    RestorePackage,
    /// `GET {owner}/packages/{type}/{name}/versions`
    ListVersions,
    /// `GET {owner}/packages/{type}/{name}/versions/{id}`
    GetVersion,
    /// `DELETE {owner}/packages/{type}/{name}/versions/{id}`
    DeleteVersion,
    /// `POST {owner}/packages/{type}/{name}/versions/{id}/restore`
    RestoreVersion,
}

/// A package addressed by type and (decoded) name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Package {
    /// Registry type.
    pub package_type: PackageType,
    /// The decoded name, e.g. `base/runtime`.
    pub name: String,
}

/// One parsed, validated Packages API request.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Route {
    /// Whose packages.
    pub owner: Owner,
    /// Which operation.
    pub operation: Operation,
    /// The package, for every operation but the two lists.
    pub package: Option<Package>,
    /// The version id, for version operations.
    pub version_id: Option<u64>,
    /// The validated query.
    pub query: Query,
}

/// Owner forms GitHub writes into `Link` URLs, which the proxy reads but never serves to clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkOwner {
    /// `/organizations/{id}`
    OrgId(u64),
    /// `/user/{id}`
    UserId(u64),
}

// === impl PackageType ===

impl PackageType {
    /// Parses GitHub's lowercase spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "npm" => Self::Npm,
            "maven" => Self::Maven,
            "rubygems" => Self::Rubygems,
            "docker" => Self::Docker,
            "nuget" => Self::Nuget,
            "container" => Self::Container,
            _ => return None,
        })
    }

    /// GitHub's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Npm => "npm",
            Self::Maven => "maven",
            Self::Rubygems => "rubygems",
            Self::Docker => "docker",
            Self::Nuget => "nuget",
            Self::Container => "container",
        }
    }
}

impl fmt::Display for PackageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Operation ===

impl Operation {
    /// The method GitHub defines for this operation.
    pub fn method(self) -> Method {
        match self {
            Self::DeletePackage | Self::DeleteVersion => Method::DELETE,
            Self::RestorePackage | Self::RestoreVersion => Method::POST,
            _ => Method::GET,
        }
    }

    /// Deletes and restores: the calls that change state at GitHub.
    pub fn is_destructive(self) -> bool {
        self.method() != Method::GET
    }

    /// A stable name for logs, metrics and policy (`delete_version`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DockerConflicts => "docker_conflicts",
            Self::ListPackages => "list_packages",
            Self::GetPackage => "get_package",
            Self::DeletePackage => "delete_package",
            Self::RestorePackage => "restore_package",
            Self::ListVersions => "list_versions",
            Self::GetVersion => "get_version",
            Self::DeleteVersion => "delete_version",
            Self::RestoreVersion => "restore_version",
        }
    }
}

// === impl Route ===

impl Route {
    /// Parses a request's raw (still percent-encoded) path and query; `None`-like failures are
    /// `NotFound`, bad query parameters `BadRequest`.
    pub fn parse(method: &Method, path: &str, query: Option<&str>) -> Result<Self, ProxyError> {
        let segments = canonical_segments(path)?;
        let segments = match segments.as_slice() {
            ["api", "v3", rest @ ..] => rest,
            all => all,
        };
        let (owner, rest) = match segments {
            ["orgs", org, rest @ ..] => (Owner::Org(login(org)?), rest),
            ["users", user, rest @ ..] => (Owner::User(login(user)?), rest),
            ["user", rest @ ..] => (Owner::AuthenticatedUser, rest),
            _ => return Err(ProxyError::NotFound),
        };
        let route = Self::parse_tail(owner, rest, query)?.with_method(method);
        let allowed = route.operation.method();
        if *method == allowed || (*method == Method::HEAD && allowed == Method::GET) {
            Ok(route)
        } else {
            Err(ProxyError::NotFound)
        }
    }

    /// Parses a URL path from an upstream `Link` header, which may use GitHub's numeric-id owner
    /// forms. Returns the route and, for id forms, the id.
    pub fn parse_link(path: &str, query: Option<&str>) -> Option<(Self, Option<LinkOwner>)> {
        let segments = canonical_segments(path).ok()?;
        let (owner, link_owner, rest) = match segments.as_slice() {
            ["organizations", id, rest @ ..] => {
                let id = id.parse().ok()?;
                (Owner::AuthenticatedUser, Some(LinkOwner::OrgId(id)), rest)
            }
            ["user", id, rest @ ..] if id.bytes().all(|b| b.is_ascii_digit()) => {
                let id = id.parse().ok()?;
                (Owner::AuthenticatedUser, Some(LinkOwner::UserId(id)), rest)
            }
            ["orgs", org, rest @ ..] => (Owner::Org(login(org).ok()?), None, rest),
            ["users", user, rest @ ..] => (Owner::User(login(user).ok()?), None, rest),
            ["user", rest @ ..] => (Owner::AuthenticatedUser, None, rest),
            _ => return None,
        };
        let route = Self::parse_tail(owner, rest, query).ok()?;
        Some((route, link_owner))
    }

    fn parse_tail(owner: Owner, rest: &[&str], query: Option<&str>) -> Result<Self, ProxyError> {
        use Operation::*;
        let (operation, package, version) = match rest {
            ["docker", "conflicts"] => (DockerConflicts, None, None),
            ["packages"] => (ListPackages, None, None),
            ["packages", ty, name, tail @ ..] => {
                let package = Package::parse(ty, name)?;
                let (operation, version) = match tail {
                    [] => (GetPackage, None),
                    ["restore"] => (RestorePackage, None),
                    ["versions"] => (ListVersions, None),
                    ["versions", id] => (GetVersion, Some(version_id(id)?)),
                    ["versions", id, "restore"] => (RestoreVersion, Some(version_id(id)?)),
                    _ => return Err(ProxyError::NotFound),
                };
                (operation, Some(package), version)
            }
            _ => return Err(ProxyError::NotFound),
        };
        let query = Query::parse(operation, query)?;
        Ok(Self {
            owner,
            operation,
            package,
            version_id: version,
            query,
        })
    }

    /// Turns `GetPackage`/`GetVersion` into their `DELETE` twins when the method says so. The path
    /// grammar cannot tell them apart, so [`Route::parse`] calls this before checking the method.
    fn with_method(mut self, method: &Method) -> Self {
        if *method == Method::DELETE {
            self.operation = match self.operation {
                Operation::GetPackage => Operation::DeletePackage,
                Operation::GetVersion => Operation::DeleteVersion,
                other => other,
            };
        }
        self
    }

    /// The route template for logs and metrics: bounded cardinality, never a raw path. Static
    /// strings, so the per-request log line and metric labels allocate nothing for it.
    pub fn template(&self) -> &'static str {
        macro_rules! table {
            ($owner:literal) => {
                match self.operation {
                    Operation::DockerConflicts => concat!($owner, "/docker/conflicts"),
                    Operation::ListPackages => concat!($owner, "/packages"),
                    Operation::GetPackage | Operation::DeletePackage => {
                        concat!($owner, "/packages/{package_type}/{package_name}")
                    }
                    Operation::RestorePackage => {
                        concat!($owner, "/packages/{package_type}/{package_name}/restore")
                    }
                    Operation::ListVersions => {
                        concat!($owner, "/packages/{package_type}/{package_name}/versions")
                    }
                    Operation::GetVersion | Operation::DeleteVersion => concat!(
                        $owner,
                        "/packages/{package_type}/{package_name}/versions/{package_version_id}"
                    ),
                    Operation::RestoreVersion => concat!(
                        $owner,
                        "/packages/{package_type}/{package_name}/versions/{package_version_id}/restore"
                    ),
                }
            };
        }
        match self.owner {
            Owner::Org(_) => table!("/orgs/{org}"),
            Owner::User(_) => table!("/users/{username}"),
            Owner::AuthenticatedUser => table!("/user"),
        }
    }

    /// The canonical path (percent-encoded, `/` in names as `%2F`) for this route.
    pub fn path(&self) -> String {
        let mut path = String::with_capacity(96);
        self.push_path(&mut path);
        path
    }

    /// Appends [`Route::path`] to `out` (the cache key builds into one buffer).
    pub fn push_path(&self, out: &mut String) {
        match &self.owner {
            Owner::Org(org) => {
                out.push_str("/orgs/");
                out.push_str(org);
            }
            Owner::User(user) => {
                out.push_str("/users/");
                out.push_str(user);
            }
            Owner::AuthenticatedUser => out.push_str("/user"),
        }
        self.push_tail(out);
    }

    fn push_tail(&self, path: &mut String) {
        if self.operation == Operation::DockerConflicts {
            path.push_str("/docker/conflicts");
            return;
        }
        path.push_str("/packages");
        if let Some(package) = &self.package {
            path.push('/');
            path.push_str(package.package_type.as_str());
            path.push('/');
            // `/` in a name is `%2F` in the path (no copy of the name).
            for (i, part) in package.name.split('/').enumerate() {
                if i > 0 {
                    path.push_str("%2F");
                }
                path.push_str(part);
            }
            match self.operation {
                Operation::RestorePackage => path.push_str("/restore"),
                Operation::ListVersions => path.push_str("/versions"),
                Operation::GetVersion | Operation::DeleteVersion | Operation::RestoreVersion => {
                    path.push_str("/versions/");
                    let _ = write!(path, "{}", self.version_id.unwrap_or_default());
                    if self.operation == Operation::RestoreVersion {
                        path.push_str("/restore");
                    }
                }
                _ => {}
            }
        }
    }

    /// The canonical path and query, as sent upstream.
    pub fn path_and_query(&self) -> String {
        let mut out = self.path();
        let query = self.query.encode();
        if !query.is_empty() {
            out.push('?');
            out.push_str(&query);
        }
        out
    }

    /// The owner's login in lower case (logins are case-insensitive), `None` for `/user`.
    pub fn owner_login(&self) -> Option<String> {
        match &self.owner {
            Owner::Org(login) | Owner::User(login) => Some(login.to_ascii_lowercase()),
            Owner::AuthenticatedUser => None,
        }
    }
}

impl fmt::Debug for Route {
    // The restore token is a secret: Debug shows the template and parts, never the query token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("owner", &self.owner)
            .field("operation", &self.operation)
            .field("package", &self.package)
            .field("version_id", &self.version_id)
            .finish_non_exhaustive()
    }
}

// === impl Package ===

impl Package {
    fn parse(ty: &str, raw_name: &str) -> Result<Self, ProxyError> {
        // `let else`, not `ok_or(NotFound)`: that builds and drops an error on every request.
        let (Some(package_type), Some(name)) = (PackageType::parse(ty), decode_name(raw_name))
        else {
            return Err(ProxyError::NotFound);
        };
        Ok(Self { package_type, name })
    }
}

// === path helpers ===

/// Splits a raw path into segments after merging repeated slashes. Refuses anything but plain
/// segment bytes, `%2F` (checked later, per segment), and `.`/`..`. A trailing slash leaves an
/// empty last segment, which no route matches (GitHub answers 404 there too).
fn canonical_segments(path: &str) -> Result<Segments<'_>, ProxyError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(ProxyError::NotFound);
    };
    if path.len() > 2048 {
        return Err(ProxyError::NotFound);
    }
    let mut segments = Segments {
        items: [""; MAX_SEGMENTS],
        len: 0,
    };
    // One pass, a table lookup per byte: split at `/` and check the bytes together (every
    // request parses its path, and two scans with a branchy check per byte cost twice this).
    let bytes = rest.as_bytes();
    let mut start = 0;
    let mut at = 0;
    loop {
        while at < bytes.len() {
            match PATH_BYTES[usize::from(bytes[at])] {
                PLAIN => at += 1,
                SLASH => break,
                // `%2F` or `%2f` only (checked per segment later); no other escape.
                PERCENT
                    if bytes.get(at + 1) == Some(&b'2')
                        && matches!(bytes.get(at + 2), Some(b'F' | b'f')) =>
                {
                    at += 3;
                }
                _ => return Err(ProxyError::NotFound),
            }
        }
        // Only ASCII got this far: `start` and `at` are on character boundaries.
        let segment = &rest[start..at];
        let last = at == bytes.len();
        // An empty segment before another is `//`, merged into `/`.
        if !segment.is_empty() || last {
            if segment == "." || segment == ".." {
                return Err(ProxyError::NotFound);
            }
            let Some(slot) = segments.items.get_mut(segments.len) else {
                return Err(ProxyError::NotFound);
            };
            *slot = segment;
            segments.len += 1;
        }
        if last {
            return Ok(segments);
        }
        at += 1;
        start = at;
    }
}

/// [`PATH_BYTES`] classes.
const REFUSED: u8 = 0;
const PLAIN: u8 = 1;
const SLASH: u8 = 2;
const PERCENT: u8 = 3;

/// What each byte is in a path: plain segment bytes are ASCII letters, digits, `.`, `_`, `-`.
const PATH_BYTES: [u8; 256] = {
    let mut table = [REFUSED; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = if c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-' {
            PLAIN
        } else if c == b'/' {
            SLASH
        } else if c == b'%' {
            PERCENT
        } else {
            REFUSED
        };
        b += 1;
    }
    table
};

/// No route has more segments (`/api/v3/users/{u}/packages/{t}/{n}/versions/{id}/restore`
/// has 10).
const MAX_SEGMENTS: usize = 12;

/// A path's segments, on the stack: every request parses one.
struct Segments<'a> {
    items: [&'a str; MAX_SEGMENTS],
    len: usize,
}

impl<'a> Segments<'a> {
    fn as_slice(&self) -> &[&'a str] {
        &self.items[..self.len]
    }
}

/// Whether `name` can be a GitHub login: ASCII letters, digits, hyphens and underscores, at most
/// 39, no encoding. Underscores appear in Enterprise Managed Users' logins (`handle_shortcode`),
/// which can own packages.
pub fn is_login(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_LOGIN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// An org or user login segment (see [`is_login`]).
fn login(segment: &str) -> Result<String, ProxyError> {
    if is_login(segment) {
        Ok(segment.to_owned())
    } else {
        Err(ProxyError::NotFound)
    }
}

/// Decodes a package-name segment: `%2F` becomes `/`; every part between slashes must be a
/// non-empty plain name that is not `.` or `..`.
fn decode_name(raw: &str) -> Option<String> {
    // Most names are one plain segment: checked as it is, and one copy.
    if !raw.bytes().any(|b| b == b'%' || b == b'/') {
        let ok = !raw.is_empty() && raw.len() <= MAX_NAME && raw != "." && raw != "..";
        return ok.then(|| raw.to_owned());
    }
    let name = raw.replace("%2F", "/").replace("%2f", "/");
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.contains('%')
        && name
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    ok.then_some(name)
}

fn version_id(segment: &str) -> Result<u64, ProxyError> {
    let digits =
        !segment.is_empty() && segment.len() <= 19 && segment.bytes().all(|b| b.is_ascii_digit());
    if !digits {
        return Err(ProxyError::NotFound);
    }
    segment.parse().map_err(|_| ProxyError::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(path: &str) -> Option<Vec<&str>> {
        canonical_segments(path).ok().map(|s| s.as_slice().to_vec())
    }

    #[test]
    fn logins_take_enterprise_managed_users_underscores_and_nothing_else() {
        for login in ["acme", "Mona-Lisa", "mona_acme", "a1", &"x".repeat(39)] {
            assert!(is_login(login), "{login}");
            let path = format!("/users/{login}/packages/container/web");
            let route = Route::parse(&Method::GET, &path, None).expect("routed");
            assert_eq!(
                route.owner_login().as_deref(),
                Some(login.to_ascii_lowercase().as_str())
            );
        }
        for refused in ["", "a.b", "a%5Fb", "a b", "a/b", &"x".repeat(40)] {
            assert!(!is_login(refused), "{refused}");
        }
    }

    #[test]
    fn splits_merges_repeated_slashes_and_keeps_a_trailing_empty_segment() {
        assert_eq!(split("/orgs/acme"), Some(vec!["orgs", "acme"]));
        assert_eq!(split("//orgs///acme"), Some(vec!["orgs", "acme"]));
        assert_eq!(split("/orgs/acme/"), Some(vec!["orgs", "acme", ""]));
        assert_eq!(split("/orgs/acme//"), Some(vec!["orgs", "acme", ""]));
        assert_eq!(split("/"), Some(vec![""]));
        assert_eq!(split("/a%2Fb"), Some(vec!["a%2Fb"]));
        assert_eq!(split(""), None);
        assert_eq!(split("orgs"), None);
        assert_eq!(split("/orgs/./acme"), None);
        assert_eq!(split("/orgs/../acme"), None);
        assert_eq!(split("/a%20b"), None);
        assert_eq!(split("/é"), None);
        assert_eq!(split("/a%2f"), Some(vec!["a%2f"]));
        for cut in ["/a%", "/a%2", "/a%2G", "/a%%2F", "/a b", "/a?b", "/a\\b"] {
            assert_eq!(split(cut), None, "{cut}");
        }
    }

    #[test]
    fn package_names_decode_slashes_and_refuse_dot_parts() {
        let long = "a".repeat(MAX_NAME + 1);
        for (raw, name) in [
            ("web", Some("web")),
            ("base%2Fruntime", Some("base/runtime")),
            ("base%2fruntime", Some("base/runtime")),
            ("", None),
            (".", None),
            ("..", None),
            ("a%2F..", None),
            ("a%2F%2Fb", None),
            ("%2Fa", None),
            ("a%20b", None),
            (long.as_str(), None),
        ] {
            assert_eq!(decode_name(raw).as_deref(), name, "{raw}");
        }
    }

    #[test]
    fn refuses_more_segments_than_any_route_has() {
        let twelve = "/a".repeat(MAX_SEGMENTS);
        assert_eq!(split(&twelve).map(|s| s.len()), Some(MAX_SEGMENTS));
        assert_eq!(split(&format!("{twelve}/a")), None);
        assert_eq!(split(&format!("{twelve}/")), None);
        assert_eq!(split(&format!("/{}", "a/".repeat(3000))), None);
    }
}

//! Path parsing: the raw, still percent-encoded request path to a typed [`Route`].
//!
//! Segments are split on a literal `/` *before* decoding, so a package name such as `base/runtime`
//! must arrive as `base%2Fruntime`; a raw slash makes a different (and here unknown) path.

use http::Method;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// The six package types of the spec's `package-type` parameter.
pub(super) const PACKAGE_TYPES: [&str; 6] =
    ["npm", "maven", "rubygems", "docker", "nuget", "container"];

/// Everything but unreserved characters is escaped in a path segment, `/` included.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Who owns the packages a request is about, as written in the path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum OwnerRef {
    /// `/orgs/{org}`
    OrgLogin(String),
    /// `/organizations/{org_id}` (the form GitHub writes into `Link`)
    OrgId(u64),
    /// `/users/{username}`
    UserLogin(String),
    /// `/user/{user_id}` (the form GitHub writes into `Link` for user-owned packages)
    UserId(u64),
    /// `/user`: the authenticated user
    Me,
}

/// A package as named in the path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct PackageRef {
    pub(super) package_type: String,
    pub(super) name: String,
}

/// One of the Packages operations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Op {
    DockerConflicts,
    ListPackages,
    GetPackage(PackageRef),
    DeletePackage(PackageRef),
    RestorePackage(PackageRef),
    ListVersions(PackageRef),
    GetVersion(PackageRef, u64),
    DeleteVersion(PackageRef, u64),
    RestoreVersion(PackageRef, u64),
}

/// A recognised request: owner plus operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Route {
    pub(super) owner: OwnerRef,
    pub(super) op: Op,
}

/// Parses `method` and the raw `path`; `None` means 404 (unknown path, or wrong method).
pub(super) fn parse(method: &Method, path: &str) -> Option<Route> {
    let rest = path.strip_prefix('/')?;
    let segments: Vec<&str> = rest.split('/').collect();
    let (owner, tail) = match segments.as_slice() {
        ["orgs", org, tail @ ..] => (OwnerRef::OrgLogin(decode(org)?), tail),
        ["organizations", id, tail @ ..] => (OwnerRef::OrgId(id.parse().ok()?), tail),
        ["users", user, tail @ ..] => (OwnerRef::UserLogin(decode(user)?), tail),
        ["user", id, tail @ ..] if is_numeric(id) => (OwnerRef::UserId(id.parse().ok()?), tail),
        ["user", tail @ ..] => (OwnerRef::Me, tail),
        _ => return None,
    };
    let op = parse_op(method, tail)?;
    Some(Route { owner, op })
}

fn parse_op(method: &Method, tail: &[&str]) -> Option<Op> {
    let get = method == Method::GET;
    let delete = method == Method::DELETE;
    let post = method == Method::POST;
    let op = match tail {
        ["docker", "conflicts"] if get => Op::DockerConflicts,
        ["packages"] if get => Op::ListPackages,
        ["packages", ty, name] if get => Op::GetPackage(package(ty, name)?),
        ["packages", ty, name] if delete => Op::DeletePackage(package(ty, name)?),
        ["packages", ty, name, "restore"] if post => Op::RestorePackage(package(ty, name)?),
        ["packages", ty, name, "versions"] if get => Op::ListVersions(package(ty, name)?),
        ["packages", ty, name, "versions", id] => {
            let (pkg, id) = (package(ty, name)?, version_id(id)?);
            match () {
                () if get => Op::GetVersion(pkg, id),
                () if delete => Op::DeleteVersion(pkg, id),
                () => return None,
            }
        }
        ["packages", ty, name, "versions", id, "restore"] if post => {
            Op::RestoreVersion(package(ty, name)?, version_id(id)?)
        }
        _ => return None,
    };
    Some(op)
}

fn package(package_type: &str, name: &str) -> Option<PackageRef> {
    if !PACKAGE_TYPES.contains(&package_type) {
        return None;
    }
    let name = decode(name)?;
    (!name.is_empty()).then(|| PackageRef {
        package_type: package_type.to_owned(),
        name,
    })
}

fn version_id(segment: &str) -> Option<u64> {
    if is_numeric(segment) {
        segment.parse().ok()
    } else {
        None
    }
}

fn is_numeric(segment: &str) -> bool {
    !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit())
}

/// Percent-encodes one path segment (a package name), writing `/` as `%2F` as GitHub does.
pub(super) fn encode_segment(segment: &str) -> String {
    utf8_percent_encode(segment, SEGMENT).to_string()
}

/// Percent-decodes one path segment; `None` if it is empty or not UTF-8.
fn decode(segment: &str) -> Option<String> {
    let decoded = percent_decode_str(segment).decode_utf8().ok()?;
    (!decoded.is_empty()).then(|| decoded.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(ty: &str, name: &str) -> PackageRef {
        PackageRef {
            package_type: ty.into(),
            name: name.into(),
        }
    }

    #[test]
    fn parses_every_owner_form() {
        let get = Method::GET;
        let route = parse(&get, "/orgs/acme/packages/container/base%2fruntime").unwrap();
        assert_eq!(route.owner, OwnerRef::OrgLogin("acme".into()));
        assert_eq!(route.op, Op::GetPackage(pkg("container", "base/runtime")));
        let route = parse(&get, "/organizations/9919/packages/npm/ui-kit/versions").unwrap();
        assert_eq!(route.owner, OwnerRef::OrgId(9919));
        assert_eq!(parse(&get, "/user/packages").unwrap().owner, OwnerRef::Me);
        assert_eq!(
            parse(&get, "/user/5/packages").unwrap().owner,
            OwnerRef::UserId(5)
        );
        assert_eq!(
            parse(&get, "/user/docker/conflicts").unwrap().op,
            Op::DockerConflicts
        );
        let route = parse(&Method::POST, "/users/o/packages/npm/x/versions/7/restore").unwrap();
        assert_eq!(route.op, Op::RestoreVersion(pkg("npm", "x"), 7));
    }

    #[test]
    fn encodes_slashes_in_names() {
        assert_eq!(encode_segment("base/runtime"), "base%2Fruntime");
        assert_eq!(encode_segment("Acme.Client_x-y~"), "Acme.Client_x-y~");
    }

    #[test]
    fn rejects_unknown_paths_and_methods() {
        let get = Method::GET;
        assert!(parse(&get, "/orgs/acme/packages/container/base/runtime").is_none());
        assert!(parse(&get, "/orgs/acme/packages/").is_none());
        assert!(parse(&get, "/orgs/acme/packages/pypi/x").is_none());
        assert!(parse(&get, "/orgs/acme/packages/npm/x/versions/abc").is_none());
        assert!(parse(&Method::PUT, "/orgs/acme/packages/npm/x").is_none());
        assert!(parse(&Method::POST, "/orgs/acme/packages/npm/x").is_none());
        assert!(parse(&get, "/repos/a/b").is_none());
    }
}

//! The Packages operations against the dataset: what each of the 27 endpoints answers.
//!
//! Reads take the dataset's read lock, delete and restore its write lock; bodies are rendered
//! while the lock is held (a few microseconds) and the lock is released before the handler awaits
//! anything.

use http::StatusCode;

use super::clock;
use super::dataset::{Dataset, Owner, OwnerKind, Package};
use super::paging::{self, Query};
use super::render::{self, DOCS_REST};
use super::reply::Reply;
use super::route::{self, Op, OwnerRef, PACKAGE_TYPES, PackageRef, Route};
use super::state::SimState;

/// GitHub's refusal to delete the only remaining version through a version endpoint.
const LAST_VERSION: &str =
    "You cannot delete the last version of a package. You must delete the package instead.";

/// Answers one recognised route.
pub(super) fn handle(state: &SimState, route: &Route, query: &Query) -> Reply {
    let base = state.base_url.as_str();
    match &route.op {
        Op::DeletePackage(p) | Op::RestorePackage(p) => {
            let mut data = state.write_data();
            let Some(owner) = resolve(&data, &route.owner, &state.me) else {
                return Reply::not_found();
            };
            let restore = matches!(route.op, Op::RestorePackage(_));
            set_package_deleted(&mut data, &owner, p, !restore)
        }
        Op::DeleteVersion(p, id) => {
            let mut data = state.write_data();
            match resolve(&data, &route.owner, &state.me) {
                Some(owner) => delete_version(&mut data, &owner, p, *id),
                None => Reply::not_found(),
            }
        }
        Op::RestoreVersion(p, id) => {
            let mut data = state.write_data();
            match resolve(&data, &route.owner, &state.me) {
                Some(owner) => restore_version(&mut data, &owner, p, *id),
                None => Reply::not_found(),
            }
        }
        op => {
            let data = state.read_data();
            match resolve(&data, &route.owner, &state.me) {
                Some(owner) => read(&data, base, &owner, op, query),
                None => Reply::not_found(),
            }
        }
    }
}

/// The read-only operations.
fn read(data: &Dataset, base: &str, owner: &Owner, op: &Op, query: &Query) -> Reply {
    match op {
        Op::ListPackages => list_packages(data, base, owner, query),
        Op::DockerConflicts => {
            let docker: Vec<_> = data
                .packages
                .iter()
                .filter(|p| p.owner_id == owner.id && !p.deleted && p.package_type == "docker")
                .map(|p| render::package(base, owner, p))
                .collect();
            Reply::ok(&docker)
        }
        Op::GetPackage(p) => match active_package(data, owner, p) {
            Some(pkg) => Reply::ok(&render::package(base, owner, pkg)),
            None => Reply::not_found(),
        },
        Op::ListVersions(p) => match active_package(data, owner, p) {
            Some(pkg) => list_versions(base, owner, pkg, query),
            None => Reply::not_found(),
        },
        Op::GetVersion(p, id) => {
            let version = active_package(data, owner, p)
                .and_then(|pkg| Some((pkg, pkg.version(*id)?)))
                .filter(|(_, v)| v.deleted_at.is_none());
            match version {
                Some((pkg, v)) => Reply::ok(&render::version(base, owner, pkg, v)),
                None => Reply::not_found(),
            }
        }
        _ => Reply::not_found(),
    }
}

fn list_packages(data: &Dataset, base: &str, owner: &Owner, query: &Query) -> Reply {
    let Some(package_type) = query
        .get("package_type")
        .filter(|t| PACKAGE_TYPES.contains(&t.as_str()))
    else {
        let types = PACKAGE_TYPES.join(", ");
        let message = format!("package_type is required and must be one of: {types}");
        return Reply::bad_request(&message);
    };
    // `internal` only narrows to non-public packages here (spec: behaves like `private`).
    let visibility = match query.get("visibility").as_deref() {
        None => None,
        Some("public") => Some("public"),
        Some("private" | "internal") => Some("private"),
        Some(_) => {
            return Reply::bad_request("visibility must be one of: public, private, internal");
        }
    };
    let page = query.page();
    if page.over_package_list_cap() {
        let message = "The value of `per_page` multiplied by `page` cannot be greater than 10000.";
        return Reply::bad_request(message);
    }
    let matching: Vec<&Package> = data
        .packages
        .iter()
        .filter(|p| p.owner_id == owner.id && !p.deleted && p.package_type == package_type)
        .filter(|p| visibility.is_none_or(|v| p.visibility == v))
        .collect();
    let body: Vec<_> = page
        .slice(&matching)
        .iter()
        .map(|p| render::package(base, owner, p))
        .collect();
    let url = format!("{}/packages", id_url(base, owner));
    with_link(
        Reply::ok(&body),
        paging::link(&url, query, page, matching.len()),
    )
}

fn list_versions(base: &str, owner: &Owner, pkg: &Package, query: &Query) -> Reply {
    let deleted = match query.get("state").as_deref() {
        None | Some("active") => false,
        Some("deleted") => true,
        Some(_) => return Reply::bad_request("state must be one of: active, deleted"),
    };
    let page = query.page();
    let matching: Vec<_> = pkg
        .versions
        .iter()
        .filter(|v| v.deleted_at.is_some() == deleted)
        .collect();
    let body: Vec<_> = page
        .slice(&matching)
        .iter()
        .map(|v| render::version(base, owner, pkg, v))
        .collect();
    let name = route::encode_segment(&pkg.name);
    let url = format!(
        "{}/packages/{}/{name}/versions",
        id_url(base, owner),
        pkg.package_type
    );
    with_link(
        Reply::ok(&body),
        paging::link(&url, query, page, matching.len()),
    )
}

fn set_package_deleted(data: &mut Dataset, owner: &Owner, p: &PackageRef, delete: bool) -> Reply {
    let Some(at) = data.package_index(owner.id, &p.package_type, &p.name) else {
        return Reply::not_found();
    };
    let pkg = &mut data.packages[at];
    // Deleting a deleted package, or restoring a live one: nothing to act on.
    if pkg.deleted == delete {
        return Reply::not_found();
    }
    pkg.deleted = delete;
    Reply::no_content()
}

fn delete_version(data: &mut Dataset, owner: &Owner, p: &PackageRef, id: u64) -> Reply {
    let Some(pkg) = active_package_mut(data, owner, p) else {
        return Reply::not_found();
    };
    let active = pkg.active_count();
    let Some(version) = pkg.version_mut(id).filter(|v| v.deleted_at.is_none()) else {
        return Reply::not_found();
    };
    if active <= 1 {
        return Reply::error(StatusCode::BAD_REQUEST, LAST_VERSION, DOCS_REST);
    }
    version.deleted_at = Some(clock::rfc3339(clock::now_epoch()));
    Reply::no_content()
}

fn restore_version(data: &mut Dataset, owner: &Owner, p: &PackageRef, id: u64) -> Reply {
    let version = active_package_mut(data, owner, p)
        .and_then(|pkg| pkg.version_mut(id))
        .filter(|v| v.deleted_at.is_some());
    match version {
        Some(version) => {
            version.deleted_at = None;
            Reply::no_content()
        }
        None => Reply::not_found(),
    }
}

/// The owner a path names, if it exists and is of the kind the path requires.
fn resolve(data: &Dataset, owner: &OwnerRef, me: &str) -> Option<Owner> {
    let (found, kind) = match owner {
        OwnerRef::OrgLogin(login) => (data.find_owner(login), OwnerKind::Organization),
        OwnerRef::OrgId(id) => (data.owner_by_id(*id), OwnerKind::Organization),
        OwnerRef::UserLogin(login) => (data.find_owner(login), OwnerKind::User),
        OwnerRef::UserId(id) => (data.owner_by_id(*id), OwnerKind::User),
        OwnerRef::Me => (data.find_owner(me), OwnerKind::User),
    };
    found.filter(|o| o.kind == kind).cloned()
}

fn active_package<'a>(data: &'a Dataset, owner: &Owner, p: &PackageRef) -> Option<&'a Package> {
    let at = data.package_index(owner.id, &p.package_type, &p.name)?;
    data.packages.get(at).filter(|pkg| !pkg.deleted)
}

fn active_package_mut<'a>(
    data: &'a mut Dataset,
    owner: &Owner,
    p: &PackageRef,
) -> Option<&'a mut Package> {
    let at = data.package_index(owner.id, &p.package_type, &p.name)?;
    data.packages.get_mut(at).filter(|pkg| !pkg.deleted)
}

/// The numeric-id prefix GitHub uses in `Link` URLs: `/organizations/{id}` or `/user/{id}`.
fn id_url(base: &str, owner: &Owner) -> String {
    match owner.kind {
        OwnerKind::Organization => format!("{base}/organizations/{}", owner.id),
        OwnerKind::User => format!("{base}/user/{}", owner.id),
    }
}

fn with_link(reply: Reply, link: Option<String>) -> Reply {
    match link {
        Some(link) => reply.header("link", &link),
        None => reply,
    }
}

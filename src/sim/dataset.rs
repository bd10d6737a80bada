//! The simulated world: owners (orgs and users), their packages and versions.
//!
//! A [`Dataset`] is a plain builder value; the running simulator owns one behind a lock and mutates
//! only the `deleted` flags of packages and versions. Everything here is deterministic: ids come
//! from counters, digests from SHA-256 of a fixed string, timestamps from a fixed base plus an
//! offset, so two runs with the same builder calls serve byte-identical bodies.

use std::collections::HashMap;

use super::clock;
use super::registry::{self, SimManifest};

/// 2024-01-02T03:04:05Z: the base of every derived timestamp.
const BASE_EPOCH: u64 = 1_704_164_645;
/// First package id handed out; version ids live in a separate, larger range so they never collide.
const FIRST_PACKAGE_ID: u64 = 1_000;
const FIRST_VERSION_ID: u64 = 100_000;
/// Repository ids are the package id plus this offset.
const REPOSITORY_ID_OFFSET: u64 = 700_000;

/// Whether an owner is an organization (`/orgs/...`) or a user (`/users/...`, `/user/...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerKind {
    /// An organization: served under `/orgs/{org}` and `/organizations/{id}`.
    Organization,
    /// A user: served under `/users/{username}`, `/user/{id}` and, when authenticated, `/user`.
    User,
}

/// Orgs, users, packages and versions the simulator serves. Build it with the chained methods.
#[derive(Clone, Debug, Default)]
pub struct Dataset {
    pub(super) owners: Vec<Owner>,
    pub(super) packages: Vec<Package>,
    /// (owner id, package type, name) -> index into `packages`: lookups stay O(1) for big datasets.
    index: HashMap<(u64, String, String), usize>,
    next_package_id: u64,
    next_version_id: u64,
}

/// An org or user.
#[derive(Clone, Debug)]
pub(super) struct Owner {
    pub(super) login: String,
    pub(super) id: u64,
    pub(super) kind: OwnerKind,
}

/// One package and its versions, newest (highest id) first.
#[derive(Clone, Debug)]
pub(super) struct Package {
    pub(super) id: u64,
    pub(super) owner_id: u64,
    pub(super) package_type: String,
    pub(super) name: String,
    pub(super) visibility: String,
    pub(super) created_at: String,
    pub(super) updated_at: String,
    /// `None` for container packages, which are never repository-scoped here.
    pub(super) repository_id: Option<u64>,
    pub(super) deleted: bool,
    pub(super) versions: Vec<Version>,
    /// Container packages: every version's image manifest, by digest (the version's `name`).
    pub(super) manifests: HashMap<String, SimManifest>,
}

/// One package version.
#[derive(Clone, Debug)]
pub(super) struct Version {
    pub(super) id: u64,
    pub(super) name: String,
    /// Container tags; `None` for other package types.
    pub(super) tags: Option<Vec<String>>,
    pub(super) created_at: String,
    /// Set while the version is deleted.
    pub(super) deleted_at: Option<String>,
}

// === impl Dataset ===

impl Dataset {
    /// An empty dataset.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an organization.
    pub fn org(self, login: &str, id: u64) -> Self {
        self.owner(login, id, OwnerKind::Organization)
    }

    /// Adds a user.
    pub fn user(self, login: &str, id: u64) -> Self {
        self.owner(login, id, OwnerKind::User)
    }

    fn owner(mut self, login: &str, id: u64, kind: OwnerKind) -> Self {
        self.owners.push(Owner {
            login: login.to_owned(),
            id,
            kind,
        });
        self
    }

    /// Adds a package owned by `owner` (an org or user added before) with `versions` versions,
    /// newest first by id descending. Container versions are named `sha256:<64 hex>`; the newest is
    /// tagged `latest` and `v1.0.<n>`, every 5th is untagged, the rest carry `v1.0.<n>`. Other types
    /// get version names `1.0.<n>` and a repository. An unknown owner is ignored.
    pub fn package(
        self,
        owner: &str,
        package_type: &str,
        name: &str,
        visibility: &str,
        versions: usize,
    ) -> Self {
        let container = package_type == "container";
        let Some(login) = self.find_owner(owner).map(|o| o.login.clone()) else {
            return self;
        };
        let mut manifests = HashMap::new();
        let versions = (1..=versions as u64)
            .map(|n| {
                let name = if container {
                    let (digest, manifest) = registry::image(&format!("{login}/{name}:{n}"), None);
                    manifests.insert(digest.clone(), manifest);
                    digest
                } else {
                    format!("1.0.{n}")
                };
                let tags = container.then(|| container_tags(n, n == versions as u64));
                (name, tags)
            })
            .collect();
        self.push(owner, package_type, name, visibility, versions, manifests)
    }

    /// Adds a container package of multi-arch images, oldest first: `orphans` untagged single
    /// images nothing references, `singles` single-platform images tagged `single-<j>`, then
    /// `indexes` images each pushed as buildx does (linux/amd64 and linux/arm64 manifests and an
    /// attestation manifest, all untagged, then the index tagged `v<i>`; the last also `latest`).
    pub fn multi_arch(
        self,
        owner: &str,
        name: &str,
        visibility: &str,
        (indexes, singles, orphans): (usize, usize, usize),
    ) -> Self {
        let Some(login) = self.find_owner(owner).map(|o| o.login.clone()) else {
            return self;
        };
        let seed = |what: String| format!("{login}/{name}:{what}");
        let mut manifests = HashMap::new();
        let mut versions = Vec::new();
        let mut add = |(digest, manifest): (String, SimManifest), tags: Vec<String>| {
            manifests.insert(digest.clone(), manifest);
            versions.push((digest.clone(), Some(tags)));
            digest
        };
        for k in 1..=orphans {
            add(
                registry::image(&seed(format!("orphan-{k}")), None),
                Vec::new(),
            );
        }
        for j in 1..=singles {
            add(
                registry::image(&seed(format!("single-{j}")), None),
                vec![format!("single-{j}")],
            );
        }
        for i in 1..=indexes {
            let amd64 = add(
                registry::image(&seed(format!("v{i}-amd64")), Some(("linux", "amd64"))),
                Vec::new(),
            );
            let arm64 = add(
                registry::image(&seed(format!("v{i}-arm64")), Some(("linux", "arm64"))),
                Vec::new(),
            );
            let att = add(
                registry::attestation(&seed(format!("v{i}-att")), &amd64),
                Vec::new(),
            );
            let mut tags = vec![format!("v{i}")];
            if i == indexes {
                tags.insert(0, "latest".to_owned());
            }
            add(registry::index(&amd64, &arm64, &att), tags);
        }
        self.push(owner, "container", name, visibility, versions, manifests)
    }

    /// Adds a package whose versions (name, container tags) are given oldest first.
    fn push(
        mut self,
        owner: &str,
        package_type: &str,
        name: &str,
        visibility: &str,
        versions: Vec<(String, Option<Vec<String>>)>,
        manifests: HashMap<String, SimManifest>,
    ) -> Self {
        let Some(owner) = self.find_owner(owner).map(|o| o.id) else {
            return self;
        };
        if self.next_package_id == 0 {
            self.next_package_id = FIRST_PACKAGE_ID;
            self.next_version_id = FIRST_VERSION_ID;
        }
        let id = self.next_package_id;
        self.next_package_id += 1;
        let first_version_id = self.next_version_id;
        self.next_version_id += versions.len() as u64;
        let start = BASE_EPOCH + (id - FIRST_PACKAGE_ID) * 86_400;
        let container = package_type == "container";
        let count = versions.len() as u64;
        let mut versions: Vec<Version> = (1..=count)
            .zip(versions)
            .map(|(n, (version_name, tags))| Version {
                id: first_version_id + n - 1,
                name: version_name,
                tags,
                created_at: clock::rfc3339(start + n * 3_600),
                deleted_at: None,
            })
            .collect();
        versions.reverse(); // newest (highest id) first
        let updated = start + count * 3_600;
        self.index.insert(
            (owner, package_type.to_owned(), name.to_owned()),
            self.packages.len(),
        );
        self.packages.push(Package {
            id,
            owner_id: owner,
            package_type: package_type.to_owned(),
            name: name.to_owned(),
            visibility: visibility.to_owned(),
            created_at: clock::rfc3339(start),
            updated_at: clock::rfc3339(updated),
            repository_id: (!container).then_some(id + REPOSITORY_ID_OFFSET),
            deleted: false,
            versions,
            manifests,
        });
        self
    }

    /// Demo and test data: org "acme" (9919) and user "octocat" (583231) with a mix of package
    /// types, visibilities and sizes (two packages have 250 versions, to exercise paging).
    pub fn sample() -> Self {
        Self::new()
            .org("acme", 9919)
            .user("octocat", 583_231)
            .package("acme", "container", "base/runtime", "public", 12)
            .package("acme", "container", "web", "private", 250)
            .package("acme", "container", "team-a-api", "private", 8)
            .package("acme", "container", "team-b/worker", "private", 6)
            .package("acme", "npm", "ui-kit", "private", 4)
            .package("acme", "maven", "com.acme.core", "private", 3)
            .package("acme", "rubygems", "acme-cli", "public", 2)
            .package("acme", "nuget", "Acme.Client", "private", 2)
            .package("acme", "docker", "legacy-app", "private", 3)
            .package("octocat", "container", "hello_docker", "public", 250)
            .package("octocat", "npm", "dotfiles", "private", 3)
    }

    /// Benchmark data: org `org` (id 9919) with `packages` private container packages `pkg-<i>`,
    /// each with `versions_per_package` versions, plus user "octocat" (583231).
    pub fn generated(org: &str, packages: usize, versions_per_package: usize) -> Self {
        let base = Self::new().org(org, 9919).user("octocat", 583_231);
        (0..packages).fold(base, |data, i| {
            data.package(
                org,
                "container",
                &format!("pkg-{i}"),
                "private",
                versions_per_package,
            )
        })
    }

    /// The version ids of a package, newest first (empty if unknown): for printing examples.
    pub fn version_ids(&self, owner: &str, package_type: &str, name: &str) -> Vec<u64> {
        self.find_owner(owner)
            .and_then(|o| self.package_index(o.id, package_type, name))
            .map(|at| self.packages[at].versions.iter().map(|v| v.id).collect())
            .unwrap_or_default()
    }

    /// The owner with this login, compared case-insensitively as GitHub does.
    pub(super) fn find_owner(&self, login: &str) -> Option<&Owner> {
        self.owners
            .iter()
            .find(|o| o.login.eq_ignore_ascii_case(login))
    }

    /// The owner with this numeric id.
    pub(super) fn owner_by_id(&self, id: u64) -> Option<&Owner> {
        self.owners.iter().find(|o| o.id == id)
    }

    /// The manifest `reference` (a digest or a tag) of container image `repository`
    /// (`owner/name`), if its version exists and is not deleted.
    pub(super) fn manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Option<(String, SimManifest)> {
        let (login, name) = repository.split_once('/')?;
        let owner = self.find_owner(login)?;
        let package = &self.packages[self.package_index(owner.id, "container", name)?];
        if package.deleted {
            return None;
        }
        let version = package.versions.iter().find(|v| {
            v.deleted_at.is_none()
                && (v.name == reference
                    || v.tags
                        .as_ref()
                        .is_some_and(|t| t.iter().any(|t| t == reference)))
        })?;
        let manifest = package.manifests.get(&version.name)?;
        Some((version.name.clone(), manifest.clone()))
    }

    /// Index of a package, deleted or not.
    pub(super) fn package_index(
        &self,
        owner_id: u64,
        package_type: &str,
        name: &str,
    ) -> Option<usize> {
        let key = (owner_id, package_type.to_owned(), name.to_owned());
        self.index.get(&key).copied()
    }
}

// === impl Package ===

impl Package {
    /// Number of versions that are not deleted (the `version_count` field).
    pub(super) fn active_count(&self) -> usize {
        self.versions
            .iter()
            .filter(|v| v.deleted_at.is_none())
            .count()
    }

    /// The version with this id, deleted or not.
    pub(super) fn version_mut(&mut self, id: u64) -> Option<&mut Version> {
        // Versions are sorted by id, descending.
        let at = self.versions.binary_search_by(|v| id.cmp(&v.id)).ok()?;
        self.versions.get_mut(at)
    }

    /// The version with this id, deleted or not.
    pub(super) fn version(&self, id: u64) -> Option<&Version> {
        let at = self.versions.binary_search_by(|v| id.cmp(&v.id)).ok()?;
        self.versions.get(at)
    }
}

fn container_tags(n: u64, newest: bool) -> Vec<String> {
    if newest {
        vec!["latest".to_owned(), format!("v1.0.{n}")]
    } else if n.is_multiple_of(5) {
        Vec::new()
    } else {
        vec![format!("v1.0.{n}")]
    }
}

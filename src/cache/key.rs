//! The cache key, and the invalidation generations inside it.
//!
//! One function, [`key`], with explicit inputs: the canonical route (path rebuilt from the typed
//! route, the owner's login case-folded, the package name as spelled), the query with defaults made explicit, `Accept`, `X-GitHub-Api-Version`, the base its
//! URLs are rewritten onto (`public_url`, and the `/api/v3` prefix if used), and the generations of the owner and package. A mistake here
//! poisons the cache for every team, so `tests/cache_key.rs` checks both directions: inputs that
//! must differ give different keys, spellings that must not (query order, defaults) give one.
//!
//! Invalidation never scans: a delete or restore bumps the package's generation and its owner's
//! list generation, so every old key simply stops being asked for (moka evicts them by size/TTL).

use std::{
    cell::{Cell, RefCell},
    collections::{BTreeSet, HashMap},
    sync::{
        Mutex, RwLock, RwLockWriteGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use crate::{
    route::{Operation, Owner, Route},
    upstream::Forwarded,
};

/// Generation counters by scope. A std `RwLock`: reads on every cacheable request, writes only
/// on deletes, restores and purges; never held across an `.await`.
#[derive(Debug, Default)]
pub struct Generations {
    /// (epoch, scope -> generation). The epoch names the shared tier's generation table: when
    /// Redis loses it (a restart), counting starts again from zero under a new epoch, so the
    /// epoch in every key keeps old keys from coming back. 0 without a shared tier.
    map: RwLock<(u64, HashMap<String, u64>)>,
    /// The epoch while the table is empty (nothing bumped: most replicas, most of the time),
    /// else [`BUMPED`]. Set under the write lock by every change, read without any lock: every
    /// cacheable request asks, and a lock shared by every connection would be touched per hit.
    plain_epoch: AtomicU64,
    /// Moves on with every change to the table, when `plain_epoch` is set (under the write
    /// lock): a key built after reading it is current for as long as it stays the same.
    version: AtomicU64,
    /// Scopes this replica bumped on its own while a shared tier exists (Redis failed mid-way):
    /// its numbers no longer match the fleet's. The shared tier replays these bumps fleet-wide
    /// and then replaces the local numbers outright (`shared::resync`); until then this replica
    /// keeps off the L2. A std `Mutex`: touched only on that rare failure and on resyncs.
    diverged: Mutex<BTreeSet<String>>,
}

/// `Generations::plain_epoch` once any scope was bumped.
const BUMPED: u64 = u64::MAX;

/// The generation table, write-locked; on drop (still holding the lock) it records whether the
/// table is empty for the lock-free read.
struct Write<'a> {
    map: RwLockWriteGuard<'a, (u64, HashMap<String, u64>)>,
    plain_epoch: &'a AtomicU64,
    version: &'a AtomicU64,
}

impl std::ops::Deref for Write<'_> {
    type Target = (u64, HashMap<String, u64>);

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl std::ops::DerefMut for Write<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.map
    }
}

impl Drop for Write<'_> {
    fn drop(&mut self) {
        let (epoch, table) = &*self.map;
        let plain = if table.is_empty() { *epoch } else { BUMPED };
        self.plain_epoch.store(plain, Ordering::Release);
        self.version.fetch_add(1, Ordering::Release);
    }
}

// === impl Generations ===

impl Generations {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, (u64, HashMap<String, u64>)> {
        self.map.read().unwrap_or_else(|poison| poison.into_inner())
    }

    /// The table for a change; `plain_epoch` follows it when the guard drops.
    fn write(&self) -> Write<'_> {
        Write {
            map: self
                .map
                .write()
                .unwrap_or_else(|poison| poison.into_inner()),
            plain_epoch: &self.plain_epoch,
            version: &self.version,
        }
    }

    /// Where the table is in its changes: read before a key is built, a key is current while
    /// this stays the same (a change's writer moves it on before it lets go of the lock).
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The epoch and the three generations a key of `route` carries (global, owner, package or
    /// lists), under one read lock. Nothing was ever bumped on most replicas most of the time:
    /// then no scope name is built at all; else they are built in one per-thread buffer.
    fn of_route(&self, route: &Route) -> [u64; 4] {
        let plain = self.plain_epoch.load(Ordering::Acquire);
        if plain != BUMPED {
            return [plain, 0, 0, 0];
        }
        let map = self.read();
        let (epoch, table) = (&map.0, &map.1);
        if table.is_empty() {
            return [*epoch, 0, 0, 0];
        }
        SCOPE.with(|scope| {
            let mut scope = scope.borrow_mut();
            let mut get = |build: &dyn Fn(&mut String)| {
                scope.clear();
                build(&mut scope);
                table.get(scope.as_str()).copied().unwrap_or(0)
            };
            let global = get(&|s| s.push_str(GLOBAL));
            let all = get(&|s| {
                s.push_str("all:");
                push_namespace(s, &route.owner);
            });
            let scoped = get(&|s| match &route.package {
                Some(package) => {
                    s.push_str("pkg:");
                    push_namespace(s, &route.owner);
                    s.push('/');
                    s.push_str(package.package_type.as_str());
                    s.push('/');
                    let start = s.len();
                    s.push_str(&package.name);
                    s[start..].make_ascii_lowercase();
                }
                None => {
                    s.push_str("lists:");
                    push_namespace(s, &route.owner);
                }
            });
            [*epoch, global, all, scoped]
        })
    }

    /// Adopts the shared tier's table: a new epoch replaces every value (the old ones belong to
    /// a table Redis no longer has); the same epoch only raises.
    pub fn adopt(&self, epoch: u64, values: &HashMap<String, u64>) {
        let mut map = self.write();
        if map.0 != epoch {
            *map = (epoch, values.clone());
            return;
        }
        for (scope, value) in values {
            let slot = map.1.entry(scope.clone()).or_insert(0);
            *slot = (*slot).max(*value);
        }
    }

    fn bump(&self, scope: String) {
        let mut map = self.write();
        *map.1.entry(scope).or_insert(0) += 1;
    }

    /// Raises a scope to `value` (from the shared tier); never lowers it.
    pub fn raise(&self, scope: &str, value: u64) {
        let mut map = self.write();
        let slot = map.1.entry(scope.to_owned()).or_insert(0);
        *slot = (*slot).max(value);
    }

    /// Bumps each scope by one on this replica only, when the fleet cannot be told (see
    /// `cache::invalidate`); the next resync with the shared tier replaces these numbers.
    pub fn bump_alone(&self, scopes: &[String]) {
        self.diverged
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .extend(scopes.iter().cloned());
        self.bump_all(scopes);
    }

    /// The epoch and a scope's value on this replica (0 if never bumped).
    pub fn value(&self, scope: &str) -> (u64, u64) {
        let map = self.read();
        (map.0, map.1.get(scope).copied().unwrap_or(0))
    }

    /// The epoch of the table this replica holds (0 before any resync).
    pub fn epoch(&self) -> u64 {
        self.read().0
    }

    /// The epoch and every value on this replica.
    pub fn table(&self) -> (u64, HashMap<String, u64>) {
        let map = self.read();
        (map.0, map.1.clone())
    }

    /// The scopes bumped on this replica alone and not yet replayed fleet-wide.
    pub fn diverged(&self) -> Vec<String> {
        let diverged = self
            .diverged
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        diverged.iter().cloned().collect()
    }

    /// Whether this replica's numbers may differ from the fleet's.
    pub fn is_diverged(&self) -> bool {
        !self
            .diverged
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .is_empty()
    }

    /// After `replayed` were bumped fleet-wide: takes the fleet's table outright (this
    /// replica's own numbers may be higher than the fleet's and would swallow later bumps).
    pub fn adopt_outright(&self, epoch: u64, values: &HashMap<String, u64>, replayed: &[String]) {
        *self.write() = (epoch, values.clone());
        let mut diverged = self
            .diverged
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        for scope in replayed {
            diverged.remove(scope);
        }
    }

    /// Bumps each scope by one (this replica only; see `cache::invalidate` for the fleet).
    pub fn bump_all(&self, scopes: &[String]) {
        for scope in scopes {
            self.bump(scope.clone());
        }
    }

    /// The scopes a delete or restore of `route`'s package invalidates.
    pub fn scopes_of(route: &Route) -> Vec<String> {
        let ns = namespace(&route.owner);
        let mut scopes = Vec::with_capacity(2);
        if let Some(package) = &route.package {
            scopes.push(package_scope(
                &ns,
                package.package_type.as_str(),
                &package.name,
            ));
        }
        scopes.push(format!("lists:{ns}"));
        scopes
    }

    /// The scopes a purge of one package invalidates (the owner as org and as user).
    pub fn scopes_of_package(owner: &str, package_type: &str, name: &str) -> Vec<String> {
        owner_namespaces(owner)
            .into_iter()
            .flat_map(|ns| {
                [
                    package_scope(&ns, package_type, name),
                    format!("lists:{ns}"),
                ]
            })
            .collect()
    }

    /// The scopes a purge of everything of one owner invalidates (as org and as user).
    pub fn scopes_of_owner(owner: &str) -> Vec<String> {
        owner_namespaces(owner)
            .into_iter()
            .map(|ns| format!("all:{ns}"))
            .collect()
    }

    /// The scope every key carries: a purge of everything bumps it (L1 and L2 alike).
    pub fn scope_of_everything() -> Vec<String> {
        vec![GLOBAL.to_owned()]
    }
}

/// The scope in every key.
const GLOBAL: &str = "global";

thread_local! {
    /// Scope names looked up while building a key, built here instead of in a new `String`.
    static SCOPE: RefCell<String> = RefCell::new(String::with_capacity(128));
}

/// Package names compare case-insensitively (as GitHub resolves them), so `Web` and `web`
/// share their invalidation scope.
fn package_scope(ns: &str, package_type: &str, name: &str) -> String {
    format!("pkg:{ns}/{package_type}/{}", name.to_ascii_lowercase())
}

/// The user namespace is shared: `/user/...` and `/users/{login}/...` may name the same packages,
/// and the token's login is not known, so every user-owned package lives in one namespace.
fn namespace(owner: &Owner) -> String {
    let mut ns = String::with_capacity(48);
    push_namespace(&mut ns, owner);
    ns
}

fn push_namespace(out: &mut String, owner: &Owner) {
    match owner {
        Owner::Org(login) => {
            out.push_str("org/");
            let start = out.len();
            out.push_str(login);
            out[start..].make_ascii_lowercase();
        }
        Owner::User(_) | Owner::AuthenticatedUser => out.push_str("users"),
    }
}

fn owner_namespaces(owner: &str) -> [String; 2] {
    [
        format!("org/{}", owner.to_ascii_lowercase()),
        "users".to_owned(),
    ]
}

/// The cache key of a GET: see the module docs for what goes in and why.
///
/// `public_base` is the base the answer's URLs (`Link`, body, the ETag's suffix) are rewritten
/// onto: the proxy's `public_url`, plus `/api/v3` when the client used that prefix. It is in the
/// key because the shared tier holds answers for every replica: one configured with another
/// `public_url` (a rename rolling out, two deployments on one Redis) must not serve them.
pub fn key(
    route: &Route,
    forwarded: &Forwarded,
    public_base: &str,
    generations: &Generations,
) -> String {
    let mut key = SPARE.take().unwrap_or_else(|| String::with_capacity(192));
    key.clear();
    key.push_str(forwarded.api_version.to_str().unwrap_or("?"));
    key.push('|');
    key.push_str(forwarded.accept.to_str().unwrap_or("?"));
    key.push('|');
    key.push_str(public_base);
    key.push('|');
    push_path(&mut key, route);
    push_normalised_query(&mut key, route);
    let [epoch, global, all, scoped] = generations.of_route(route);
    key.push_str("|g");
    push_int(&mut key, epoch);
    for generation in [global, all, scoped] {
        key.push('.');
        push_int(&mut key, generation);
    }
    key
}

thread_local! {
    /// A key a fresh hit was done with, kept for the thread's next key: a hit needs its key only
    /// for the lookup, and allocating it per request was a needless allocation and free.
    static SPARE: Cell<Option<String>> = const { Cell::new(None) };
}

/// A copy of `known` (a key [`key`] built, still current), in this thread's spare buffer.
pub fn copy(known: &str) -> String {
    let mut key = SPARE.take().unwrap_or_else(|| String::with_capacity(192));
    key.clear();
    key.push_str(known);
    key
}

/// Hands a key that is no longer needed back to [`key`] on this thread.
pub(super) fn recycle(key: String) {
    // A key is at most a few hundred bytes (bounded path and query); keep no outsized buffer.
    if key.capacity() <= 1024 {
        SPARE.set(Some(key));
    }
}

/// Appends `n` in decimal (`itoa`: every key has six numbers, `fmt` costs more than the rest).
fn push_int(key: &mut String, n: impl itoa::Integer) {
    key.push_str(itoa::Buffer::new().format(n));
}

/// The canonical path with the owner's login in lower case. Logins are case-insensitive at GitHub:
/// one entry for every spelling. Package names are not folded: GitHub (and the simulator) finds
/// `web` but not `WEB`, so an answer for one spelling (a cached 404 above all) must never be served
/// for another. Invalidation still covers every spelling: the package's generation scope is
/// case-folded (`package_scope`), and it is in every spelling's key.
fn push_path(key: &mut String, route: &Route) {
    let start = key.len();
    route.push_path(key);
    // `/orgs/{login}` or `/users/{login}`: logins are case-insensitive, package names are not.
    let owner_end = start
        + match &route.owner {
            Owner::AuthenticatedUser => 0,
            Owner::Org(login) => "/orgs/".len() + login.len(),
            Owner::User(login) => "/users/".len() + login.len(),
        };
    key[start..owner_end].make_ascii_lowercase();
}

/// The query with GitHub's defaults written out, in a fixed order.
fn push_normalised_query(key: &mut String, route: &Route) {
    let q = &route.query;
    let page = q.page.unwrap_or(1);
    let per_page = q.per_page.unwrap_or(30);
    match route.operation {
        Operation::ListPackages => {
            key.push_str("?package_type=");
            key.push_str(q.package_type.map(|t| t.as_str()).unwrap_or("-"));
            key.push_str("&visibility=");
            key.push_str(q.visibility.unwrap_or("all"));
        }
        Operation::ListVersions => {
            key.push_str("?state=");
            key.push_str(q.state.unwrap_or("active"));
        }
        _ => return,
    }
    key.push_str("&per_page=");
    push_int(key, per_page);
    key.push_str("&page=");
    push_int(key, page);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn generations_follow_bumps_and_epochs_through_the_lock_free_read() {
        let generations = Generations::default();
        let route = Route::parse(
            &Method::GET,
            "/orgs/acme/packages/container/web/versions",
            None,
        )
        .expect("a route");
        assert_eq!(generations.of_route(&route), [0, 0, 0, 0]);
        generations.adopt(7, &HashMap::new());
        assert_eq!(generations.of_route(&route), [7, 0, 0, 0]);
        generations.bump_all(&[GLOBAL.to_owned()]);
        assert_eq!(generations.of_route(&route), [7, 1, 0, 0]);
        generations.raise(GLOBAL, 5);
        assert_eq!(generations.of_route(&route), [7, 5, 0, 0]);
        generations.adopt_outright(8, &HashMap::new(), &[]);
        assert_eq!(generations.of_route(&route), [8, 0, 0, 0]);
    }
}

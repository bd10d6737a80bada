// Compatibility check: an unmodified @octokit/rest client pointed at packages-proxy.
//
// Run by tests/octokit.rs against a proxy in front of the simulator (sample dataset):
//   BASE_URL=http://127.0.0.1:PORT TOKEN=ppx_... node tests/octokit/check.mjs
// Prints a JSON summary on stdout; exits 1 if any check failed, 2 on bad usage.

import { Octokit } from "@octokit/rest";

const BASE_URL = process.env.BASE_URL;
const TOKEN = process.env.TOKEN;
if (!BASE_URL || !TOKEN) {
  console.error("usage: BASE_URL=http://host:port TOKEN=<proxy client token> node check.mjs");
  process.exit(2);
}

// No retry/throttling plugins: each call is one HTTP request (per page), so a refusal shows as is.
const octokit = new Octokit({ auth: TOKEN, baseUrl: BASE_URL, userAgent: "packages-proxy-octokit-check" });

const results = [];
let versionId = null;

async function check(name, fn) {
  try {
    const detail = await fn();
    results.push({ name, ok: true, detail });
  } catch (err) {
    results.push({
      name,
      ok: false,
      error: String(err && err.message ? err.message : err),
      status: err && err.status,
      url: err && err.request && err.request.url,
    });
  }
}

function assert(cond, message) {
  if (!cond) throw new Error(message);
}

/** Runs `fn`, which must fail with a RequestError of `status`; returns what it saw. */
async function expectStatus(status, fn) {
  let response;
  try {
    response = await fn();
  } catch (err) {
    assert(err && err.name === "HttpError", `expected a RequestError (HttpError), got ${err && err.name}: ${err}`);
    assert(err.status === status, `expected status ${status}, got ${err.status}: ${err.message}`);
    return { status: err.status, message: err.response && err.response.data && err.response.data.message, url: err.request.url };
  }
  throw new Error(`expected status ${status}, but the request succeeded with ${response && response.status}`);
}

// (1) Pagination: 250 versions over 3 pages, following the proxy's Link headers.
await check("paginate versions of acme/web", async () => {
  const pages = [];
  const versions = await octokit.paginate(
    octokit.rest.packages.getAllPackageVersionsForPackageOwnedByOrg,
    { org: "acme", package_type: "container", package_name: "web", per_page: 100 },
    (response) => {
      pages.push(response.url);
      return response.data;
    },
  );
  const ids = new Set(versions.map((v) => v.id));
  assert(versions.length === 250, `expected 250 versions, got ${versions.length}`);
  assert(ids.size === 250, `expected 250 distinct ids, got ${ids.size}`);
  assert(pages.length === 3, `expected 3 pages, got ${pages.length}: ${pages.join(" ")}`);
  for (const url of pages) {
    assert(url.startsWith(BASE_URL + "/"), `page URL does not point at the proxy: ${url}`);
  }
  versionId = versions[versions.length - 1].id;
  return { count: versions.length, distinct_ids: ids.size, pages };
});

// (2) A package name with a slash: Octokit's URL template (RFC 6570 simple expansion) sends
// `base%2Fruntime` by itself; passing encodeURIComponent(name) would double-encode it (%252F).
await check("get acme/base/runtime (slash in name)", async () => {
  const response = await octokit.rest.packages.getPackageForOrganization({
    org: "acme",
    package_type: "container",
    package_name: "base/runtime",
  });
  assert(response.status === 200, `expected 200, got ${response.status}`);
  assert(response.data.name === "base/runtime", `expected name base/runtime, got ${response.data.name}`);
  assert(response.url.includes("/base%2Fruntime"), `expected %2F in the request URL: ${response.url}`);
  return { status: response.status, name: response.data.name, url: response.url };
});

// (3) The org's container packages.
await check("list acme container packages", async () => {
  const packages = await octokit.paginate(octokit.rest.packages.listPackagesForOrganization, {
    org: "acme",
    package_type: "container",
  });
  const names = packages.map((p) => p.name).sort();
  const expected = ["base/runtime", "team-a-api", "team-b/worker", "web"];
  assert(JSON.stringify(names) === JSON.stringify(expected), `expected ${expected.join(",")}, got ${names.join(",")}`);
  assert(packages.every((p) => p.package_type === "container"), "a non-container package was listed");
  return { names };
});

// (4) Deletes are refused by the proxy (no allow rule in the test config): 403, never forwarded.
await check("delete version refused with 403", async () => {
  assert(versionId !== null, "no version id (check 1 failed)");
  const seen = await expectStatus(403, () =>
    octokit.rest.packages.deletePackageVersionForOrg({
      org: "acme",
      package_type: "container",
      package_name: "web",
      package_version_id: versionId,
    }),
  );
  // The version is still there.
  const after = await octokit.rest.packages.getPackageVersionForOrganization({
    org: "acme",
    package_type: "container",
    package_name: "web",
    package_version_id: versionId,
  });
  assert(after.status === 200 && after.data.id === versionId, `version ${versionId} is gone after the refused delete`);
  return { version_id: versionId, ...seen };
});

// (5) A wrong client token: 401.
await check("wrong token refused with 401", async () => {
  const wrong = new Octokit({ auth: "ppx_wrong_" + "0".repeat(40), baseUrl: BASE_URL });
  return expectStatus(401, () =>
    wrong.rest.packages.getPackageForOrganization({ org: "acme", package_type: "container", package_name: "web" }),
  );
});

// (6) Headers a client reads pass through: the API version GitHub answered with (Octokit users
// check it before relying on a version's behaviour) and the caller's own scopes.
await check("api version selected and caller scopes", async () => {
  const response = await octokit.request("GET /orgs/{org}/packages/{package_type}/{package_name}", {
    org: "acme",
    package_type: "container",
    package_name: "web",
    headers: { "x-github-api-version": "2022-11-28" },
  });
  const selected = response.headers["x-github-api-version-selected"];
  assert(selected === "2022-11-28", `expected x-github-api-version-selected 2022-11-28, got ${selected}`);
  const scopes = response.headers["x-oauth-scopes"];
  assert(scopes === "read:packages", `expected the caller's scopes (read:packages), got ${scopes}`);
  return { selected, scopes };
});

const ok = results.every((r) => r.ok);
console.log(JSON.stringify({ ok, octokit_core: Octokit.VERSION, node: process.version, results }, null, 2));
process.exit(ok ? 0 : 1);

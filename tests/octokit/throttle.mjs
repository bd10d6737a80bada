// Octokit with its throttling and retry plugins, as GitHub recommends running it, against
// packages-proxy while the proxy's shared token is rate-limited.
//
// Run by tests/octokit.rs:  BASE_URL=http://127.0.0.1:PORT TOKEN=ppx_... node throttle.mjs
// Reads one uncached key. The handlers are those of the `octokit` package's defaults: retry
// once after the wait the plugin computes from GitHub's headers (x-ratelimit-reset for a
// primary limit, retry-after for a secondary one). Prints a JSON summary; exits 1 on failure.

import { Octokit } from "@octokit/rest";
import { throttling } from "@octokit/plugin-throttling";
import { retry } from "@octokit/plugin-retry";

const BASE_URL = process.env.BASE_URL;
const TOKEN = process.env.TOKEN;
if (!BASE_URL || !TOKEN) {
  console.error("usage: BASE_URL=http://host:port TOKEN=<proxy client token> node throttle.mjs");
  process.exit(2);
}

const events = [];
const Throttled = Octokit.plugin(throttling, retry);
const octokit = new Throttled({
  auth: TOKEN,
  baseUrl: BASE_URL,
  userAgent: "packages-proxy-octokit-throttle",
  throttle: {
    onRateLimit: (retryAfter, options, _octokit, retryCount) => {
      events.push({ kind: "rate-limit", retryAfter, retryCount });
      return retryCount === 0;
    },
    onSecondaryRateLimit: (retryAfter, options, _octokit, retryCount) => {
      events.push({ kind: "secondary-rate-limit", retryAfter, retryCount });
      return retryCount === 0;
    },
  },
});

const started = Date.now();
try {
  const response = await octokit.rest.packages.getAllPackageVersionsForPackageOwnedByOrg({
    org: "acme",
    package_type: "container",
    package_name: "web",
    per_page: 7,
  });
  const summary = {
    ok: response.status === 200 && response.data.length === 7,
    status: response.status,
    count: response.data.length,
    seconds: (Date.now() - started) / 1000,
    events,
  };
  console.log(JSON.stringify(summary));
  process.exit(summary.ok ? 0 : 1);
} catch (err) {
  console.log(
    JSON.stringify({
      ok: false,
      status: err && err.status,
      error: String(err && err.message ? err.message : err),
      seconds: (Date.now() - started) / 1000,
      events,
    }),
  );
  process.exit(1);
}

#!/usr/bin/env node
// A real nats.js client check (@nats-io/transport-node 3.x), driven by tests/ecosystem.rs.
//
// Usage (run from anywhere; modules resolve from scripts/compat/node_modules):
//   node tests/interop/nats_js_peel.mjs --url URL --creds FILE --ca FILE
//       [--own SUBJECT] [--foreign SUBJECT] [--foreign-sub SUBJECT]
//       [--request SUBJECT] [--id ID] [--inbox-prefix PREFIX]
//
// Steps (each only when its option is given):
//   1. connect with credsAuthenticator(<creds bytes>), TLS verified against --ca
//      (tls: { caFile }), inbox prefix --inbox-prefix (default _INBOX.<id>), name
//      zester-peel-<id>, no reconnects, 5 s timeout;
//   2. publish on --own, then on --foreign, then flush: the server handles PUBs in order
//      and answers the PING after both, so any violation for either has arrived once the
//      flush resolves (plus a short grace period for the status iterator to deliver it);
//   3. subscribe to --foreign-sub and wait up to 2 s for its permission violation;
//   4. request --request with payload "test.ping" (3 s timeout) and report the reply text.
//
// Permission violations arrive as {type: "error", error: PermissionViolationError} on
// nc.status(); the error carries `operation` ("publish" | "subscription") and `subject`.
//
// Prints ONE JSON object on stdout:
//   {"connected": bool, "error": str|null, "own_publish_ok": bool|null,
//    "foreign_publish_violation": bool|null, "foreign_subscribe_violation": bool|null,
//    "request_reply": str|null}
// A field is null when its option was not given (request_reply: also when no reply came;
// the reason is then in "error"). Exit status 0 whenever the JSON was produced.

import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(here, "..", "..", "scripts", "compat", "package.json"));
const { connect, credsAuthenticator } = require("@nats-io/transport-node");

const WAIT_MS = 2000;

const { values: args } = parseArgs({
  options: {
    url: { type: "string" },
    creds: { type: "string" },
    ca: { type: "string" },
    own: { type: "string" },
    foreign: { type: "string" },
    "foreign-sub": { type: "string" },
    request: { type: "string" },
    id: { type: "string", default: "peel-a" },
    "inbox-prefix": { type: "string" },
  },
});

const result = {
  connected: false,
  error: null,
  own_publish_ok: null,
  foreign_publish_violation: null,
  foreign_subscribe_violation: null,
  request_reply: null,
};

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function main() {
  if (!args.url || !args.creds || !args.ca) {
    throw new Error("--url, --creds and --ca are required");
  }
  const nc = await connect({
    servers: args.url,
    authenticator: credsAuthenticator(readFileSync(args.creds)),
    tls: { caFile: args.ca },
    inboxPrefix: args["inbox-prefix"] ?? `_INBOX.${args.id}`,
    name: `zester-peel-${args.id}`,
    reconnect: false,
    timeout: 5000,
  });
  result.connected = true;

  const violations = [];
  const others = [];
  (async () => {
    for await (const s of nc.status()) {
      if (s.type !== "error") continue;
      if (s.error?.name === "PermissionViolationError") {
        violations.push({ operation: s.error.operation, subject: s.error.subject });
      } else {
        others.push(String(s.error?.message ?? s.error));
      }
    }
  })();
  const violated = (operation, subject) =>
    violations.some((v) => v.operation === operation && v.subject === subject);
  const waitViolation = async (operation, subject) => {
    for (let waited = 0; waited < WAIT_MS && !violated(operation, subject); waited += 50) {
      await sleep(50);
    }
    return violated(operation, subject);
  };

  try {
    if (args.own || args.foreign) {
      if (args.own) nc.publish(args.own, "mine");
      if (args.foreign) nc.publish(args.foreign, "should-be-refused");
      await nc.flush();
      if (args.foreign) {
        result.foreign_publish_violation = await waitViolation("publish", args.foreign);
      } else {
        await sleep(200);
      }
      if (args.own) {
        result.own_publish_ok = nc.isClosed() === false && !violated("publish", args.own);
      }
    }
    if (args["foreign-sub"]) {
      const sub = nc.subscribe(args["foreign-sub"]);
      // the subscription's iterator ends with the violation: drain it so it is not unhandled
      (async () => {
        try {
          for await (const _ of sub) {
            // nothing is expected here
          }
        } catch {
          // the permission violation, reported through status() too
        }
      })();
      await nc.flush();
      result.foreign_subscribe_violation = await waitViolation("subscription", args["foreign-sub"]);
    }
    if (args.request) {
      try {
        const reply = await nc.request(args.request, "test.ping", { timeout: 3000 });
        result.request_reply = reply.string();
      } catch (e) {
        result.error = `request ${args.request}: ${e?.message ?? e}`;
      }
    }
    if (result.error === null && others.length > 0) {
      result.error = others.join("; ");
    }
  } finally {
    await Promise.race([nc.close(), sleep(WAIT_MS)]);
  }
}

try {
  await main();
} catch (e) {
  if (result.error === null) result.error = String(e?.message ?? e);
}
process.stdout.write(JSON.stringify(result) + "\n");
process.exit(0);

#!/usr/bin/env node
// Verifies ONE NATS JWT with the official nats-io JS libraries and prints its claims.
//
// Usage:
//   node verify.mjs [CREDS_FILE] [--chain OPERATOR_JWT_FILE ACCOUNT_JWT_FILE]
//                   [--creds-seed-matches] [--ignore-time]
//
//   Without CREDS_FILE the JWT is read from stdin (a bare JWT, surrounding whitespace
//   ignored; a decorated creds blob on stdin is accepted too). With CREDS_FILE the
//   JWT is the first decorated block of the creds file.
//
//   --chain OP ACC        the input must be a user JWT; additionally check that
//                         * OP is a valid operator JWT (self-signed or signed by one
//                           of its own signing keys) and ACC a valid account JWT;
//                         * ACC is issued by OP's identity key or one of OP's signing
//                           keys (with strict_signing_key_usage: signing keys only);
//                         * the user is issued by ACC's identity key or one of ACC's
//                           signing keys; when issued by a signing key,
//                           nats.issuer_account must equal ACC's sub (and when issued by
//                           the identity key it must be absent or equal ACC's sub);
//                         * the user's sub is not in ACC's revocations.
//   --creds-seed-matches  (needs CREDS_FILE, or creds on stdin) the seed in the creds
//                         must be a user seed deriving the public key in the JWT's sub.
//   --ignore-time         do not fail on exp in the past / nbf in the future.
//
// Output: the decoded claims of the input JWT as JSON on stdout (exactly what
// @nats-io/jwt's decode() returns). Exit 0 when everything checks out; exit 1 with
// a message on stderr when not; exit 2 on a usage error.
//
// Every JWT is verified twice: by @nats-io/jwt decode() (which checks the signature
// with the iss key) and again explicitly with @nats-io/nkeys fromPublic(iss).verify()
// over "<header>.<payload>", with a strict base64url check of the 64-byte signature.

import { readFileSync } from "node:fs";

import { Algorithms, decode } from "@nats-io/jwt";
import { fromPublic, fromSeed } from "@nats-io/nkeys";

class Invalid extends Error {}
class Usage extends Error {}

function fail(msg) {
  throw new Invalid(msg);
}

const USAGE =
  "usage: node verify.mjs [CREDS_FILE] [--chain OPERATOR_JWT_FILE ACCOUNT_JWT_FILE] [--creds-seed-matches] [--ignore-time]";

function parseArgs(argv) {
  const opts = { creds: null, chain: null, seedMatches: false, ignoreTime: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--chain") {
      if (i + 2 >= argv.length) {
        throw new Usage("--chain needs OPERATOR_JWT_FILE ACCOUNT_JWT_FILE");
      }
      opts.chain = { operator: argv[i + 1], account: argv[i + 2] };
      i += 2;
    } else if (a === "--creds-seed-matches") {
      opts.seedMatches = true;
    } else if (a === "--ignore-time") {
      opts.ignoreTime = true;
    } else if (a === "-h" || a === "--help") {
      process.stdout.write(USAGE + "\n");
      process.exit(0);
    } else if (a.startsWith("--")) {
      throw new Usage(`unknown option ${a}`);
    } else if (opts.creds === null) {
      opts.creds = a;
    } else {
      throw new Usage(`unexpected argument ${a}`);
    }
  }
  return opts;
}

// Same shape as nats.go's creds parser: a block is "---...---\n<token>\n---...---".
const CREDS_BLOCK =
  /\s*(?:(?:-{3,}[^\n]*-{3,}\r?\n)([\w\-.=]+)(?:\r?\n-{3,}[^\n]*-{3,}(?:\r?\n|$)))/g;

function parseCredsText(text, what) {
  const blocks = [...text.matchAll(CREDS_BLOCK)].map((m) => m[1]);
  if (blocks.length < 1) {
    fail(`${what}: no decorated JWT block found`);
  }
  return { jwt: blocks[0], seed: blocks.length > 1 ? blocks[1] : null };
}

function readText(path, what) {
  try {
    return readFileSync(path, "utf8");
  } catch (e) {
    fail(`${what}: cannot read ${path}: ${e.message}`);
  }
}

function readJwtFile(path, what) {
  const text = readText(path, what);
  if (text.includes("-----BEGIN")) {
    return parseCredsText(text, what).jwt;
  }
  return text.trim();
}

const B64URL = /^[A-Za-z0-9_-]+$/;

function b64urlJson(part, what) {
  try {
    return JSON.parse(Buffer.from(part, "base64url").toString("utf8"));
  } catch (e) {
    fail(`${what}: not base64url JSON: ${e.message}`);
  }
}

const TYPE_PREFIXES = {
  // type: [allowed iss prefixes, sub prefix]
  operator: ["O", "O"],
  account: ["O", "A"],
  user: ["A", "U"],
};

// Verifies one token; returns its claims (from @nats-io/jwt decode()).
function verifyToken(token, what, ignoreTime) {
  if (typeof token !== "string" || token.length === 0) {
    fail(`${what}: empty input`);
  }
  const parts = token.split(".");
  if (parts.length !== 3) {
    fail(`${what}: expected 3 dot-separated parts, got ${parts.length}`);
  }
  parts.forEach((p, i) => {
    if (!B64URL.test(p)) {
      fail(`${what}: part ${i + 1} is not unpadded base64url`);
    }
  });

  // 1. the library's own decoder (checks typ/alg and the signature with the iss key)
  let claims;
  try {
    claims = decode(token);
  } catch (e) {
    fail(`${what}: @nats-io/jwt decode failed: ${e.message}`);
  }

  // 2. an explicit nkeys verification, independent of decode()
  const header = b64urlJson(parts[0], `${what} header`);
  const sig = Buffer.from(parts[2], "base64url");
  if (sig.length !== 64) {
    fail(`${what}: signature is ${sig.length} bytes, want 64`);
  }
  if (sig.toString("base64url") !== parts[2]) {
    fail(`${what}: signature is not canonical base64url`);
  }
  if (typeof claims.iss !== "string") {
    fail(`${what}: no iss`);
  }
  let issKp;
  try {
    issKp = fromPublic(claims.iss);
  } catch (e) {
    fail(`${what}: iss ${claims.iss} is not a public nkey: ${e.message}`);
  }
  const signed = header.alg === Algorithms.v2 ? `${parts[0]}.${parts[1]}` : parts[1];
  let ok = false;
  try {
    ok = issKp.verify(new TextEncoder().encode(signed), new Uint8Array(sig));
  } catch (e) {
    fail(`${what}: nkeys verify error: ${e.message}`);
  }
  if (!ok) {
    fail(`${what}: nkeys signature verification failed for iss ${claims.iss}`);
  }

  // 3. key types consistent with the claim type
  const type = claims.nats?.type ?? claims.type;
  const pfx = TYPE_PREFIXES[type];
  if (pfx) {
    if (!pfx[0].includes(claims.iss[0])) {
      fail(`${what}: ${type} JWT issued by a ${claims.iss[0]}… key (${claims.iss})`);
    }
    if (typeof claims.sub !== "string" || claims.sub[0] !== pfx[1]) {
      fail(`${what}: ${type} JWT with sub ${claims.sub}, want a ${pfx[1]}… key`);
    }
    try {
      fromPublic(claims.sub);
    } catch (e) {
      fail(`${what}: sub ${claims.sub} is not a public nkey: ${e.message}`);
    }
  }

  // 4. validity window
  if (!ignoreTime) {
    const now = Math.floor(Date.now() / 1000);
    if (claims.exp && claims.exp < now) {
      fail(`${what}: expired at ${claims.exp} (now ${now})`);
    }
    if (claims.nbf && claims.nbf > now) {
      fail(`${what}: not valid before ${claims.nbf} (now ${now})`);
    }
  }
  return claims;
}

function claimType(c) {
  return c.nats?.type ?? c.type;
}

function signingKeyIds(list) {
  return (list ?? []).map((k) => (typeof k === "string" ? k : k?.key)).filter(Boolean);
}

function checkChain(user, chain, ignoreTime) {
  const op = verifyToken(readJwtFile(chain.operator, "operator"), "operator", ignoreTime);
  const acc = verifyToken(readJwtFile(chain.account, "account"), "account", ignoreTime);
  if (claimType(op) !== "operator") {
    fail(`operator: not an operator JWT (type ${claimType(op)})`);
  }
  if (claimType(acc) !== "account") {
    fail(`account: not an account JWT (type ${claimType(acc)})`);
  }
  if (claimType(user) !== "user") {
    fail(`input: --chain needs a user JWT (type ${claimType(user)})`);
  }

  const opSks = signingKeyIds(op.nats.signing_keys);
  if (op.iss !== op.sub && !opSks.includes(op.iss)) {
    fail(`operator: issued by ${op.iss}, neither its sub nor one of its signing keys`);
  }

  const strict = op.nats.strict_signing_key_usage === true;
  const accIssuers = strict ? opSks : [op.sub, ...opSks];
  if (!accIssuers.includes(acc.iss)) {
    fail(
      `account: issued by ${acc.iss}, not by ${
        strict ? "one of the operator's signing keys (strict_signing_key_usage)" : "the operator"
      } ${op.sub}`,
    );
  }

  const accSks = signingKeyIds(acc.nats.signing_keys);
  const ia = user.nats.issuer_account;
  if (user.iss === acc.sub) {
    if (ia !== undefined && ia !== "" && ia !== acc.sub) {
      fail(`user: issued by the account identity key but issuer_account is ${ia}`);
    }
  } else if (accSks.includes(user.iss)) {
    if (ia !== acc.sub) {
      fail(
        `user: issued by account signing key ${user.iss} but issuer_account is ${
          ia ?? "(missing)"
        }, want ${acc.sub}`,
      );
    }
  } else {
    fail(`user: issued by ${user.iss}, neither account ${acc.sub} nor one of its signing keys`);
  }

  const rev = acc.nats.revocations ?? {};
  for (const k of [user.sub, "*"]) {
    if (Object.hasOwn(rev, k) && user.iat <= rev[k]) {
      fail(`user: ${user.sub} is revoked by the account (revocations[${k}] = ${rev[k]})`);
    }
  }
}

function main() {
  let opts;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`${e.message}\n${USAGE}\n`);
    return 2;
  }
  try {
    let token;
    let seed = null;
    let isCreds = false;
    if (opts.creds !== null) {
      ({ jwt: token, seed } = parseCredsText(readText(opts.creds, "creds"), "creds"));
      isCreds = true;
    } else {
      let text;
      try {
        text = readFileSync(0, "utf8");
      } catch (e) {
        fail(`cannot read stdin: ${e.message}`);
      }
      if (text.includes("-----BEGIN")) {
        ({ jwt: token, seed } = parseCredsText(text, "stdin creds"));
        isCreds = true;
      } else {
        token = text.trim();
      }
    }

    const claims = verifyToken(token, "input", opts.ignoreTime);

    if (opts.chain) {
      checkChain(claims, opts.chain, opts.ignoreTime);
    }
    if (opts.seedMatches) {
      if (!isCreds) {
        throw new Usage("--creds-seed-matches needs a creds file");
      }
      if (!seed) {
        fail("creds: no seed block");
      }
      if (!seed.startsWith("SU")) {
        fail(`creds: seed is not a user seed (prefix ${seed.slice(0, 2)})`);
      }
      let pub;
      try {
        pub = fromSeed(new TextEncoder().encode(seed)).getPublicKey();
      } catch (e) {
        fail(`creds: bad seed: ${e.message}`);
      }
      if (pub !== claims.sub) {
        fail(`creds: seed derives ${pub}, JWT sub is ${claims.sub}`);
      }
    }

    process.stdout.write(JSON.stringify(claims, null, 2) + "\n");
    return 0;
  } catch (e) {
    if (e instanceof Usage) {
      process.stderr.write(`${e.message}\n${USAGE}\n`);
      return 2;
    }
    if (e instanceof Invalid) {
      process.stderr.write(`invalid: ${e.message}\n`);
      return 1;
    }
    process.stderr.write(`invalid: ${e?.stack ?? e}\n`);
    return 1;
  }
}

process.exitCode = main();

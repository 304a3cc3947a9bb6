#!/usr/bin/env node
// Generates the NATS JWT/creds interop fixture set in testdata/compat/ with the
// official nats-io JavaScript libraries (@nats-io/jwt + @nats-io/nkeys).
//
// Usage (from the repository root):
//   (cd scripts/compat && npm ci) && node scripts/compat/gen-fixtures.mjs [OUT_DIR]
//
// OUT_DIR defaults to <repo>/testdata/compat. Existing fixture files are overwritten.
// Every run makes fresh keys, so all public keys, JWTs and the manifest change.
//
// These are TEST FIXTURES ONLY: the seed written into peel1.creds is a throwaway
// test key; no other seed is written anywhere.

import { mkdirSync, writeFileSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { isDeepStrictEqual } from "node:util";

import {
  decode,
  encodeAccount,
  encodeOperator,
  encodeUser,
  fmtCreds,
  parseCreds,
} from "@nats-io/jwt";
import {
  createAccount,
  createOperator,
  createUser,
  fromPublic,
} from "@nats-io/nkeys";

const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = resolve(here, "..", "..");
const outDir = resolve(process.argv[2] ?? join(repoRoot, "testdata", "compat"));

function pkgVersion(name) {
  const p = join(here, "node_modules", ...name.split("/"), "package.json");
  return JSON.parse(readFileSync(p, "utf8")).version;
}

const now = Math.floor(Date.now() / 1000);
// "10 years from now": 3652 days (10 * 365 + 2 leap days), in unix seconds.
const TEN_YEARS = 3652 * 24 * 60 * 60;
const userExp = now + TEN_YEARS;

// ---------------------------------------------------------------- keys
const operatorKp = createOperator(); // operator identity (O…)
const operatorSkKp = createOperator(); // operator signing key (O…)
const sysKp = createAccount(); // SYS account identity (A…)
const zesterKp = createAccount(); // ZESTER account identity (A…)
const zesterSkKp = createAccount(); // ZESTER account signing key (A…)
const peel1Kp = createUser(); // user peel1 (U…)
const bearerKp = createUser(); // bearer user (U…)
const identitySignedKp = createUser(); // user signed by the ZESTER identity key (U…)
const revokedKp = createUser(); // random user key listed in ZESTER's revocations (U…)

const pk = (kp) => kp.getPublicKey();

// ---------------------------------------------------------------- claims (inputs)
const operatorNats = {
  signing_keys: [pk(operatorSkKp)],
  system_account: pk(sysKp),
  // Not in jwt.js's TypeScript Operator type, but the claims body is free-form JSON;
  // nats-io/jwt (Go) and nats-server read it as OperatorClaims.StrictSigningKeyUsage.
  strict_signing_key_usage: true,
};

// What `nsc add account` writes for an account with unlimited limits and
// unlimited JetStream (`nsc edit account --js-enable 1` style, all -1).
const unlimitedLimits = {
  subs: -1,
  data: -1,
  payload: -1,
  imports: -1,
  exports: -1,
  wildcards: true,
  conn: -1,
  leaf: -1,
  mem_storage: -1,
  disk_storage: -1,
  streams: -1,
  consumer: -1,
  mem_max_stream_bytes: -1,
  disk_max_stream_bytes: -1,
  max_ack_pending: -1,
  max_bytes_required: false,
};

const sysNats = {
  limits: {
    subs: -1,
    data: -1,
    payload: -1,
    imports: -1,
    exports: -1,
    wildcards: true,
    conn: -1,
    leaf: -1,
  },
};

const revokedAt = now; // revocations: user public key -> unix seconds
const zesterNats = {
  limits: unlimitedLimits,
  signing_keys: [pk(zesterSkKp)],
  revocations: { [pk(revokedKp)]: revokedAt },
};

const peel1Nats = {
  pub: { allow: ["zester.event.peel1.>", "zester.fact.peel1"] },
  sub: { allow: ["zester.cmd.peel1", "zester.cmd.peel1.>"] },
  resp: { max: 1, ttl: 0 },
  tags: ["role:peel"],
};

const bearerNats = {
  bearer_token: true,
  pub: { allow: ["zester.bearer.>"] },
  sub: { allow: ["zester.bearer.>"] },
};

const identitySignedNats = {
  pub: { allow: ["zester.identity.>"] },
  sub: { allow: ["zester.identity.>"] },
};

// ---------------------------------------------------------------- encode
const operatorJwt = await encodeOperator("zester-op", operatorKp, operatorNats);
// SYS and ZESTER are signed by the operator SIGNING key (strict_signing_key_usage).
const sysJwt = await encodeAccount("SYS", sysKp, sysNats, { signer: operatorSkKp });
const zesterJwt = await encodeAccount("ZESTER", zesterKp, zesterNats, {
  signer: operatorSkKp,
});
// Users signed by the ZESTER signing key: encodeUser sets nats.issuer_account = ZESTER.
// The identity key is passed public-only, to show the seed is not needed for that.
const zesterPub = fromPublic(pk(zesterKp));
const peel1Jwt = await encodeUser("peel1", peel1Kp, zesterPub, peel1Nats, {
  signer: zesterSkKp,
  exp: userExp,
});
const bearerJwt = await encodeUser("bearer", bearerKp, zesterPub, bearerNats, {
  signer: zesterSkKp,
  exp: userExp,
});
// Signed directly by the account identity key: no issuer_account.
const identitySignedJwt = await encodeUser(
  "identity-signed",
  identitySignedKp,
  zesterKp,
  identitySignedNats,
  { exp: userExp },
);
const peel1Creds = fmtCreds(peel1Jwt, peel1Kp);

// ---------------------------------------------------------------- self-checks
function check(cond, msg) {
  if (!cond) {
    throw new Error(`self-check failed: ${msg}`);
  }
}

// decode() verifies the signature with the iss key and throws otherwise.
const decoded = {
  "operator.jwt": decode(operatorJwt),
  "sys.jwt": decode(sysJwt),
  "zester.jwt": decode(zesterJwt),
  "peel1.jwt": decode(peel1Jwt),
  "bearer.jwt": decode(bearerJwt),
  "identity-signed.jwt": decode(identitySignedJwt),
};

const parsed = await parseCreds(peel1Creds);
check(parsed.jwt === peel1Jwt, "creds JWT round-trip");
check(parsed.key === new TextDecoder().decode(peel1Kp.getSeed()), "creds seed round-trip");
check(parsed.aid === pk(zesterKp), "creds account id");

// Expected contents, written from the inputs above (not from the decoded tokens),
// then compared with what was decoded.
const userDefaults = { data: -1, payload: -1, subs: -1 }; // jwt.js defaultUser()
const expected = {
  "operator.jwt": {
    kind: "operator JWT (self-signed by the operator identity key)",
    iss: pk(operatorKp),
    sub: pk(operatorKp),
    name: "zester-op",
    aud: "NATS",
    exp: null,
    nats: { ...operatorNats, type: "operator", version: 2 },
  },
  "sys.jwt": {
    kind: "account JWT for the system account SYS, signed by the operator signing key",
    iss: pk(operatorSkKp),
    sub: pk(sysKp),
    name: "SYS",
    aud: "NATS",
    exp: null,
    nats: { ...sysNats, type: "account", version: 2 },
  },
  "zester.jwt": {
    kind:
      "account JWT for ZESTER, signed by the operator signing key; one account signing key, unlimited limits incl. JetStream, one revoked user key",
    iss: pk(operatorSkKp),
    sub: pk(zesterKp),
    name: "ZESTER",
    aud: "NATS",
    exp: null,
    nats: { ...zesterNats, type: "account", version: 2 },
  },
  "peel1.jwt": {
    kind: "user JWT for peel1, signed by the ZESTER signing key, issuer_account = ZESTER",
    iss: pk(zesterSkKp),
    sub: pk(peel1Kp),
    name: "peel1",
    aud: "NATS",
    exp: userExp,
    nats: {
      ...userDefaults,
      ...peel1Nats,
      issuer_account: pk(zesterKp),
      type: "user",
      version: 2,
    },
  },
  "bearer.jwt": {
    kind: "bearer user JWT (bearer_token: true), signed by the ZESTER signing key",
    iss: pk(zesterSkKp),
    sub: pk(bearerKp),
    name: "bearer",
    aud: "NATS",
    exp: userExp,
    nats: {
      ...userDefaults,
      ...bearerNats,
      issuer_account: pk(zesterKp),
      type: "user",
      version: 2,
    },
  },
  "identity-signed.jwt": {
    kind: "user JWT signed directly by the ZESTER identity key (no issuer_account)",
    iss: pk(zesterKp),
    sub: pk(identitySignedKp),
    name: "identity-signed",
    aud: "NATS",
    exp: userExp,
    nats: { ...userDefaults, ...identitySignedNats, type: "user", version: 2 },
  },
};

for (const [file, exp] of Object.entries(expected)) {
  const c = decoded[file];
  for (const f of ["iss", "sub", "name", "aud"]) {
    check(c[f] === exp[f], `${file}: ${f} ${c[f]} != ${exp[f]}`);
  }
  check((c.exp ?? null) === exp.exp, `${file}: exp`);
  check(isDeepStrictEqual(c.nats, exp.nats), `${file}: nats ${JSON.stringify(c.nats)}`);
  check(typeof c.iat === "number" && typeof c.jti === "string", `${file}: iat/jti`);
}

// ---------------------------------------------------------------- write
const tokens = {
  "operator.jwt": operatorJwt,
  "sys.jwt": sysJwt,
  "zester.jwt": zesterJwt,
  "peel1.jwt": peel1Jwt,
  "bearer.jwt": bearerJwt,
  "identity-signed.jwt": identitySignedJwt,
};
mkdirSync(outDir, { recursive: true });
const write = (name, data, mode = 0o644) => {
  writeFileSync(join(outDir, name), data, { mode });
};

for (const [file, token] of Object.entries(tokens)) {
  write(file, token + "\n");
}
write("peel1.creds", peel1Creds, 0o600);

const files = {};
for (const [file, exp] of Object.entries(expected)) {
  const c = decoded[file];
  files[file] = {
    ...exp,
    nbf: null,
    // Values only known after encoding (iat is the signing time, jti a hash):
    iat: c.iat,
    jti: c.jti,
    // the JOSE header, e.g. {"typ":"JWT","alg":"ed25519-nkey"}
    header: JSON.parse(Buffer.from(tokens[file].split(".")[0], "base64url").toString("utf8")),
    // the full decoded claims, exactly as jwt.js decode() returns them
    claims: c,
  };
}
files["peel1.creds"] = {
  kind:
    "decorated user creds (jwt.js fmtCreds): peel1.jwt followed by peel1's user seed (S U…)",
  jwt_file: "peel1.jwt",
  seed_public_key: pk(peel1Kp),
  seed_prefix: "SU",
};

const manifest = {
  description:
    "NATS JWT/creds interop fixtures generated by scripts/compat/gen-fixtures.mjs with the official nats-io JS libraries. Test keys only.",
  generator: "scripts/compat/gen-fixtures.mjs",
  libraries: {
    "@nats-io/jwt": pkgVersion("@nats-io/jwt"),
    "@nats-io/nkeys": pkgVersion("@nats-io/nkeys"),
  },
  generated_at: now,
  keys: {
    operator: pk(operatorKp),
    operator_signing_key: pk(operatorSkKp),
    sys: pk(sysKp),
    zester: pk(zesterKp),
    zester_signing_key: pk(zesterSkKp),
    peel1: pk(peel1Kp),
    bearer: pk(bearerKp),
    identity_signed: pk(identitySignedKp),
    revoked_user: pk(revokedKp),
  },
  revocations: { [pk(revokedKp)]: revokedAt },
  user_exp: userExp,
  peel1: {
    pub_allow: peel1Nats.pub.allow,
    sub_allow: peel1Nats.sub.allow,
    resp: peel1Nats.resp,
    tags: peel1Nats.tags,
    exp: userExp,
    issuer_account: pk(zesterKp),
    iss: pk(zesterSkKp),
  },
  files,
};
write("manifest.json", JSON.stringify(manifest, null, 2) + "\n");

process.stderr.write(`wrote fixtures to ${outDir}\n`);

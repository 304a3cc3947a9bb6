#!/usr/bin/env node
// Seals and opens nkeys xkey payloads (`xkv1` ‖ 24-byte nonce ‖ NaCl box) with the official
// @nats-io/nkeys curve keys, for the cross-implementation tests of zester's secrets
// (tests/secrets.rs).
//
// Usage:
//   node xkeys.mjs open <recipient-seed> <sender-public>   stdin: payload base64; stdout: plaintext base64
//   node xkeys.mjs seal <sender-seed> <recipient-public>   stdin: plaintext base64; stdout: payload base64
//   node xkeys.mjs new                                     stdout: {"seed": "SX…", "public": "X…"}
//
// Base64 is the standard alphabet with padding. Exit 1 when the payload does not open (nkeys
// returns null), 2 on a usage error.

import { readFileSync } from "node:fs";

import { createCurve, fromCurveSeed } from "@nats-io/nkeys";

const USAGE =
  "usage: node xkeys.mjs open <recipient-seed> <sender-public> | seal <sender-seed> <recipient-public> | new";

function stdinBytes() {
  return new Uint8Array(Buffer.from(readFileSync(0, "utf8").trim(), "base64"));
}

function main() {
  const [op, seed, other, ...rest] = process.argv.slice(2);
  if (op === "new" && seed === undefined) {
    const kp = createCurve();
    const out = { seed: new TextDecoder().decode(kp.getSeed()), public: kp.getPublicKey() };
    process.stdout.write(JSON.stringify(out) + "\n");
    return 0;
  }
  if ((op !== "open" && op !== "seal") || !seed || !other || rest.length > 0) {
    process.stderr.write(USAGE + "\n");
    return 2;
  }
  const kp = fromCurveSeed(new TextEncoder().encode(seed));
  const input = stdinBytes();
  if (op === "seal") {
    process.stdout.write(Buffer.from(kp.seal(input, other)).toString("base64") + "\n");
    return 0;
  }
  const opened = kp.open(input, other);
  if (opened === null) {
    process.stderr.write("does not open\n");
    return 1;
  }
  process.stdout.write(Buffer.from(opened).toString("base64") + "\n");
  return 0;
}

process.exitCode = main();

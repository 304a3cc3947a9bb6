//! Fixtures shared by the fuzz targets and the seed-corpus generator: one small, fixed NATS
//! world (keys made from constant bytes, a fixed `NOW`) and the valid inputs made from it.
//!
//! Everything here is deterministic — Ed25519 signatures, JWT ids and the sealing nonces are
//! functions of constants — so what a target builds at start-up is byte for byte what
//! `examples/seeds.rs` wrote to `testdata/fuzz-corpus/<target>/seed-*`. That lets the targets check the
//! property that matters, not only "no panic": libFuzzer mutates these seeds without end, and
//! the fuzzer can neither sign nor seal, so the only inputs that may ever verify or open are the
//! seeds themselves. Anything else that is accepted is a forgery, and the target aborts on it.

use std::sync::OnceLock;

use nkeys::{KeyPair, KeyPairType, XKey};
use zester::appliance::callout::protocol::{self, Channel};
use zester::identity::claims::{
    AccountNats, AuthRequestNats, Claims, ClientInformation, ConnectOptions, ExternalAuthorization,
    OperatorNats, ServerIdentity, SigningKey, UserNats,
};
use zester::identity::creds::format_creds;
use zester::identity::jwt;
use zester::identity::peel_id::PeelId;
use zester::permissions::{permissions_for, Role};

/// The clock every target decides at (the seeds are valid then).
pub const NOW: i64 = 1_800_000_000;
/// The plaintext sealed in [`World::envelope`].
pub const SECRET: &[u8] = b"db password: correct horse battery staple";

/// The fixed world. Public keys are what callers need; the seeds stay inside.
pub struct World {
    /// The ZESTER account (the `sub` of authorization requests).
    pub account: String,
    /// The callout's curve key (requests are sealed to it).
    pub callout_xkey: XKey,
    /// The server's curve key (it seals requests).
    pub server_xkey: XKey,
    /// The master's curve key (it seals secrets).
    pub master_xkey: XKey,
    /// The peel's curve key (secrets are sealed to it).
    pub peel_xkey: XKey,
    /// The channel the callout opens sealed requests with.
    pub channel: Channel,
    /// Operator, account, peel user, authorization request and response JWTs.
    pub tokens: Vec<String>,
    /// The peel's user JWT (also in [`World::tokens`]).
    pub user_jwt: String,
    /// The peel's user seed.
    pub user_seed: String,
    /// The authorization request JWT (also in [`World::tokens`]).
    pub request_jwt: String,
    /// [`World::request_jwt`] sealed from the server to the callout.
    pub sealed_request: Vec<u8>,
    /// The raw nkeys xkey payload of [`SECRET`] from the master to the peel.
    pub payload: Vec<u8>,
    /// `ENC[<peel xkey>,<base64 payload>]`.
    pub envelope: String,
}

fn pair(kind: KeyPairType, byte: u8) -> KeyPair {
    // 32 constant bytes are always a valid Ed25519 seed.
    KeyPair::new_from_raw(kind, [byte; 32]).expect("a raw seed of 32 bytes")
}

fn sign<N: zester::identity::claims::ClaimBody>(claims: Claims<N>, signer: &KeyPair) -> String {
    jwt::encode(claims, signer)
        .expect("fixture claims are signable")
        .token()
        .to_string()
}

impl World {
    fn build() -> World {
        let operator = pair(KeyPairType::Operator, 1);
        let account = pair(KeyPairType::Account, 2);
        let account_signer = pair(KeyPairType::Account, 3);
        let user = pair(KeyPairType::User, 4);
        let server = pair(KeyPairType::Server, 5);
        let connecting = pair(KeyPairType::User, 6);
        let callout_xkey = XKey::new_from_raw([7; 32]);
        let server_xkey = XKey::new_from_raw([8; 32]);
        let master_xkey = XKey::new_from_raw([9; 32]);
        let peel_xkey = XKey::new_from_raw([10; 32]);

        let operator_jwt = sign(
            Claims {
                sub: operator.public_key(),
                name: "zester".into(),
                iat: NOW,
                nats: OperatorNats {
                    system_account: account.public_key(),
                    ..OperatorNats::default()
                },
                ..Claims::default()
            },
            &operator,
        );
        let account_jwt = sign(
            Claims {
                sub: account.public_key(),
                name: "ZESTER".into(),
                iat: NOW,
                nats: AccountNats {
                    signing_keys: vec![SigningKey::Key(account_signer.public_key())],
                    authorization: ExternalAuthorization {
                        auth_users: vec![user.public_key()],
                        allowed_accounts: Vec::new(),
                        xkey: callout_xkey.public_key(),
                    },
                    ..AccountNats::default()
                },
                ..Claims::default()
            },
            &operator,
        );
        let id = PeelId::parse("web-01").expect("a valid peel id");
        let mut user_nats = UserNats::with_permissions(permissions_for(&Role::Peel(id.clone())));
        user_nats.issuer_account = account.public_key();
        user_nats.tags = vec!["zester-role:peel".into()];
        let user_jwt = sign(
            Claims {
                sub: user.public_key(),
                name: id.to_string(),
                iat: NOW,
                exp: NOW + 180 * 86_400,
                nats: user_nats,
                ..Claims::default()
            },
            &account_signer,
        );
        let request_jwt = sign(
            Claims {
                sub: account.public_key(),
                aud: protocol::REQUEST_AUDIENCE.into(),
                iat: NOW,
                exp: NOW + 2,
                nats: AuthRequestNats {
                    server: ServerIdentity {
                        name: "zester".into(),
                        host: "127.0.0.1".into(),
                        id: server.public_key(),
                        version: "2.12.0".into(),
                        xkey: server_xkey.public_key(),
                        ..ServerIdentity::default()
                    },
                    user_nkey: connecting.public_key(),
                    client_info: ClientInformation {
                        host: "127.0.0.1".into(),
                        id: 7,
                        user: user.public_key(),
                        name: "web-01".into(),
                        kind: "Client".into(),
                        client_type: "nats".into(),
                        nonce: "bm9uY2U".into(),
                        ..ClientInformation::default()
                    },
                    connect_opts: ConnectOptions {
                        jwt: user_jwt.clone(),
                        signed_nonce: "c2lnbmF0dXJl".into(),
                        name: "web-01".into(),
                        lang: "rust".into(),
                        version: "0.51.0".into(),
                        protocol: 1,
                        ..ConnectOptions::default()
                    },
                    ..AuthRequestNats::default()
                },
                ..Claims::default()
            },
            &server,
        );
        let request: jwt::AuthRequestJwt =
            jwt::decode(&request_jwt, NOW).expect("the fixture request verifies");
        let response_jwt = String::from_utf8(
            protocol::answer(
                &request.claims().nats,
                Ok(&user_jwt),
                &account_signer,
                &account.public_key(),
                None,
                NOW,
            )
            .expect("the fixture answer signs"),
        )
        .expect("a plain answer is a token");

        let callout_public = XKey::from_public_key(&callout_xkey.public_key()).expect("curve key");
        let sealed_request = server_xkey
            .seal_with_nonce(
                request_jwt.as_bytes(),
                &callout_public,
                crypto_box::Nonce::from([11; 24]),
            )
            .expect("sealing with a secret key");
        let channel = Channel::new(&callout_xkey, &server_xkey.public_key()).expect("a curve key");

        let peel_public = XKey::from_public_key(&peel_xkey.public_key()).expect("curve key");
        let payload = master_xkey
            .seal_with_nonce(SECRET, &peel_public, crypto_box::Nonce::from([12; 24]))
            .expect("sealing with a secret key");
        let envelope = zester::secrets::Envelope {
            recipient: peel_xkey.public_key(),
            payload: payload.clone(),
        }
        .to_text();

        World {
            account: account.public_key(),
            callout_xkey,
            server_xkey,
            master_xkey,
            peel_xkey,
            channel,
            tokens: vec![
                operator_jwt,
                account_jwt,
                user_jwt.clone(),
                request_jwt.clone(),
                response_jwt,
            ],
            user_jwt,
            user_seed: user.seed().expect("made from a seed"),
            request_jwt,
            sealed_request,
            payload,
            envelope,
        }
    }

    /// The peel's `.creds` text, as `zester creds issue` writes it.
    pub fn creds(&self) -> String {
        format_creds(&self.user_jwt, &self.user_seed)
    }
}

/// The world, built once per process.
pub fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(World::build)
}

/// One seed file: the target's corpus it belongs to, its file name, its bytes.
pub struct Seed {
    /// Fuzz target name (`testdata/fuzz-corpus/<target>/`).
    pub target: &'static str,
    /// File name, always `seed-…` (only those are committed; see fuzz/.gitignore).
    pub name: &'static str,
    /// Contents.
    pub bytes: Vec<u8>,
}

/// Every seed of every target.
pub fn seeds() -> Vec<Seed> {
    let w = world();
    let creds = w.creds();
    let seed = |target, name, bytes: Vec<u8>| Seed {
        target,
        name,
        bytes,
    };
    let names = [
        "seed-operator.jwt",
        "seed-account.jwt",
        "seed-user.jwt",
        "seed-request.jwt",
        "seed-response.jwt",
    ];
    let mut out: Vec<Seed> = names
        .iter()
        .zip(&w.tokens)
        .map(|(name, token)| seed("jwt_decode", name, token.clone().into_bytes()))
        .collect();
    out.extend([
        seed("creds", "seed-peel.creds", creds.clone().into_bytes()),
        seed(
            "creds",
            "seed-crlf-no-trailer.creds",
            creds
                .replace('\n', "\r\n")
                .split("------END USER NKEY SEED")
                .next()
                .unwrap_or_default()
                .to_string()
                .into_bytes(),
        ),
        seed(
            "creds",
            "seed-undecorated-seed.creds",
            format!(
                "{}\n# the seed, without its fence (nats.go reads it too)\n{}\n",
                zester::identity::creds::decorate_jwt("user", &w.user_jwt),
                w.user_seed
            )
            .into_bytes(),
        ),
        seed("auth_request", "seed-sealed.bin", w.sealed_request.clone()),
        seed(
            "auth_request",
            "seed-plain.jwt",
            w.request_jwt.clone().into_bytes(),
        ),
        seed("envelope_open", "seed-envelope.txt", w.envelope.clone().into_bytes()),
        seed("envelope_open", "seed-payload.bin", w.payload.clone()),
        seed(
            "config",
            "seed-default.toml",
            zester::home::config::DEFAULT_CONFIG_TOML.as_bytes().to_vec(),
        ),
        seed(
            "config",
            "seed-custom.toml",
            b"[server]\nlisten = \"[::1]:4333\"\nmonitor = \"0.0.0.0:0\"\n\
              tls_names = [\"nats.example\", \"10.0.0.5\"]\nnats_server = \"/usr/bin/nats-server\"\n\n\
              [peels]\nexpiry = \"1y\"\nsession_ttl = \"15m\"\n\n\
              [keys]\naccept = \"auto-trusted\"\ntrusted = [\"web-*\", \"db-0?\"]\n\
              max_pending = 5\nenrol_rate = 0\n"
                .to_vec(),
        ),
        seed(
            "config",
            "seed-inline.toml",
            b"server = { listen = \"localhost:4222\" }\npeels.expiry = \"2w\"\nkeys.accept = \"auto-all\"\n"
                .to_vec(),
        ),
    ]);
    out
}

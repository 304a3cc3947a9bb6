//! The pure identity core: nkeys roles, NATS JWT v2 claims, chain validation, `.creds` and
//! peel ids. Nothing here touches files, the network or the clock: callers pass `now`.

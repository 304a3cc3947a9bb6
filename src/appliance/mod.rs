//! What runs inside `zester up`: `up` starts and stops everything in order; `broker` supervises
//! the nats-server child; `callout` decides every connection; `keys` keeps the key store and its
//! cache; `admin` serves the admin API, `admins` keeps the named admins one list for the whole
//! cluster; `enrol`, `rotate`, `renew` and `settings` serve the
//! peels' requests; `respond` is the one way every service answers (only into the asker's
//! inbox); `cert_renewal` keeps the child's TLS certificate valid, `own_renewal` the creds of
//! zester's own users; `cluster` is a node's part in a cluster (its own users announced to
//! the other nodes, JetStream's meta group, the buckets' replicas); `grow` carries a single
//! node's buckets into the cluster it grows into; `nodes` keeps the cluster's node records and
//! answers `zester node join`; `metrics` is what Prometheus sees, `scrape` serves it on
//! `/metrics`.

pub mod account;
pub mod admin;
pub mod admins;
pub mod broker;
pub mod callout;
pub mod cert_renewal;
pub mod cluster;
pub mod connz;
pub mod enrol;
pub mod grow;
pub mod hook;
pub mod keys;
pub mod kv_leader;
pub mod metrics;
pub mod nodes;
pub mod own_renewal;
pub mod pinning;
pub mod renew;
pub mod respond;
pub mod rotate;
pub mod scrape;
pub mod settings;
pub mod tokens;
pub mod up;

//! What both ends of a conversation share, pure: subject names and the rule for where a
//! service may send its answer. No I/O here; the appliance and the peel build on it.

pub mod reply;
pub mod subjects;

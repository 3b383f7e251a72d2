//! Bridges: faces that push what committed to another system instead of serving clients.
//! They stand on the store alone (its transactional outbox), never on the HTTP faces.

pub mod mqtt;
pub mod webpush;

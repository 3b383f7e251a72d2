//! The REST face: publishing, the inbox, topics, health and the demo page. Handlers only:
//! what they share with the other HTTP faces lives in [`crate::http`], and the route table
//! that puts them beside the live transports in `src/routes`.

pub mod demo;
pub mod health;
pub mod notifications;
pub mod preferences;
pub mod push;
pub mod scheduled;
pub mod topics;

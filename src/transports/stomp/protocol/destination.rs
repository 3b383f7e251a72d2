//! SUBSCRIBE destinations, named after Spring's conventions so that an existing front end
//! only changes its URL: `/user/queue/notifications` is the caller's own feed, and
//! `/topic/<name>` a topic the caller is subscribed to.

use crate::domain::TopicName;
use crate::transports::stomp::ack::truncate;

/// The client's own feed.
pub const FEED: &str = "/user/queue/notifications";
/// Prefix of topic destinations: `/topic/<name>`.
pub const TOPIC_PREFIX: &str = "/topic/";

/// What a subscription listens to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Feed,
    Topic(TopicName),
}

/// Resolves a SUBSCRIBE destination. Spring's names: `/user/queue/...` is per user, and
/// `/topic/...` is a broadcast (here: a topic the caller is subscribed to).
pub fn parse_destination(destination: &str) -> Result<Destination, String> {
    if destination == FEED {
        return Ok(Destination::Feed);
    }
    if let Some(name) = destination.strip_prefix(TOPIC_PREFIX) {
        return TopicName::parse(name)
            .map(Destination::Topic)
            .map_err(|m| format!("the topic name {m}"));
    }
    Err(format!(
        "unknown destination '{}'; subscribe to {FEED} or {TOPIC_PREFIX}<name>",
        truncate(destination, 128)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations() {
        assert_eq!(parse_destination(FEED), Ok(Destination::Feed));
        assert_eq!(
            parse_destination("/topic/deploys.prod"),
            Ok(Destination::Topic(
                TopicName::parse("deploys.prod").unwrap()
            ))
        );
        assert!(parse_destination("/topic/").is_err());
        assert!(parse_destination("/topic/a/b").is_err());
        assert!(parse_destination("/queue/other")
            .unwrap_err()
            .contains("unknown destination"));
        assert!(parse_destination("/user/queue/notifications/x").is_err());
    }
}

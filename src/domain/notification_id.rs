//! A recipient's notification id, derived from where the notification is stored.
//!
//! A publish stores its content once (a message) and gives each recipient a narrow inbox
//! row keyed by (user, seq). Storing a random UUID per recipient would cost an index entry
//! written at a random place in a large index for every recipient of every publish, which
//! profiles showed to be a large share of ingest. Instead the id is computed from the
//! message id, the recipient's ordinal in the publish and its seq, and packed into a UUID
//! of version 8 (RFC 9562's "custom" layout):
//!
//! - unique: two recipients of one message differ in ordinal; two messages differ in id;
//! - found without an index: decoding gives the seq, so a user's lookup by id is a
//!   primary-key read of (user, seq), checked against the message id;
//! - stable: the same row always renders the same id.
//!
//! The fields are not secret (every lookup is scoped to the caller's own inbox, and a
//! service's delete to its own messages), so no mixing is needed.
//!
//! Ids of notifications stored before this layout are random (versions 4 and 7); they are
//! kept as they were and looked up through their own index.

use uuid::Uuid;

/// Bits for each field: 48 + 32 + 42 = 122, the payload of a version-8 UUID.
const MESSAGE_BITS: u32 = 48;
const ORDINAL_BITS: u32 = 32;
const SEQ_BITS: u32 = 42;

/// The parts an id is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotificationId {
    pub message: i64,
    pub ordinal: u32,
    pub seq: i64,
}

impl NotificationId {
    /// `None` when a field is outside its range (2^48 messages, 2^42 seqs per user): the
    /// store then refuses the write rather than hand out an id that could repeat.
    pub fn new(message: i64, ordinal: u32, seq: i64) -> Option<Self> {
        let fits = |v: i64, bits: u32| v >= 0 && (v as u64) < (1u64 << bits);
        (fits(message, MESSAGE_BITS) && fits(seq, SEQ_BITS)).then_some(Self {
            message,
            ordinal,
            seq,
        })
    }

    pub fn to_uuid(self) -> Uuid {
        let payload: u128 = ((self.message as u128) << (ORDINAL_BITS + SEQ_BITS))
            | ((self.ordinal as u128) << SEQ_BITS)
            | (self.seq as u128);
        Uuid::new_v8(spread(payload).to_be_bytes())
    }

    /// The parts of an id made by [`NotificationId::to_uuid`]; `None` for any other UUID
    /// (a random one from before this layout, or one a client made up).
    pub fn from_uuid(id: &Uuid) -> Option<Self> {
        if id.get_version_num() != 8 || id.get_variant() != uuid::Variant::RFC4122 {
            return None;
        }
        let payload = gather(id.as_u128());
        let seq_mask = (1u128 << SEQ_BITS) - 1;
        let ordinal_mask = (1u128 << ORDINAL_BITS) - 1;
        Some(Self {
            message: (payload >> (ORDINAL_BITS + SEQ_BITS)) as i64,
            ordinal: ((payload >> SEQ_BITS) & ordinal_mask) as u32,
            seq: (payload & seq_mask) as i64,
        })
    }
}

/// A version-8 UUID's fixed bits: the version in bits 76..80 and the variant in bits 62..64
/// (counting from the least significant). The 122 payload bits fill the rest, in order.
const VERSION_SHIFT: u32 = 76;
const VARIANT_SHIFT: u32 = 62;

fn spread(payload: u128) -> u128 {
    let low = payload & ((1u128 << VARIANT_SHIFT) - 1);
    let mid = (payload >> VARIANT_SHIFT) & ((1u128 << (VERSION_SHIFT - VARIANT_SHIFT - 2)) - 1);
    let high = payload >> (VERSION_SHIFT - 2);
    (high << (VERSION_SHIFT + 4)) | (mid << (VARIANT_SHIFT + 2)) | low
}

fn gather(raw: u128) -> u128 {
    let low = raw & ((1u128 << VARIANT_SHIFT) - 1);
    let mid = (raw >> (VARIANT_SHIFT + 2)) & ((1u128 << (VERSION_SHIFT - VARIANT_SHIFT - 2)) - 1);
    let high = raw >> (VERSION_SHIFT + 4);
    (high << (VERSION_SHIFT - 2)) | (mid << VARIANT_SHIFT) | low
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_at_the_edges_of_every_field() {
        let max_message = (1i64 << MESSAGE_BITS) - 1;
        let max_seq = (1i64 << SEQ_BITS) - 1;
        for (m, o, s) in [
            (0, 0, 0),
            (1, 0, 1),
            (max_message, u32::MAX, max_seq),
            (max_message, 0, 0),
            (0, u32::MAX, 0),
            (0, 0, max_seq),
            (123_456_789, 99_999, 42),
        ] {
            let id = NotificationId::new(m, o, s).expect("in range");
            let uuid = id.to_uuid();
            assert_eq!(uuid.get_version_num(), 8, "{uuid}");
            assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122, "{uuid}");
            assert_eq!(NotificationId::from_uuid(&uuid), Some(id), "{uuid}");
        }
    }

    #[test]
    fn recipients_of_one_message_with_the_same_seq_get_different_ids() {
        let a = NotificationId::new(7, 0, 1).expect("in range").to_uuid();
        let b = NotificationId::new(7, 1, 1).expect("in range").to_uuid();
        assert_ne!(a, b);
    }

    #[test]
    fn refuses_fields_out_of_range() {
        assert!(NotificationId::new(1i64 << MESSAGE_BITS, 0, 0).is_none());
        assert!(NotificationId::new(0, 0, 1i64 << SEQ_BITS).is_none());
        assert!(NotificationId::new(-1, 0, 0).is_none());
        assert!(NotificationId::new(0, 0, -1).is_none());
    }

    #[test]
    fn random_ids_are_not_taken_for_derived_ones() {
        assert!(NotificationId::from_uuid(&Uuid::new_v4()).is_none());
        assert!(NotificationId::from_uuid(&Uuid::now_v7()).is_none());
        assert!(NotificationId::from_uuid(&Uuid::nil()).is_none());
    }
}

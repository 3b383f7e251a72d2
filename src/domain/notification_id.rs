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
//! Lookups are scoped to the caller's own inbox, but the plain fields would still tell a
//! user the deployment's publish volume (the message id counts every publish). So ids are
//! handed out encrypted: the 122 payload bits go through a keyed permutation ([`IdKey`], a
//! four-round Feistel network with SHA-256 as its round function, keyed by a random key
//! that every replica reads from the database), and the UUID's variant bits say so (`11`
//! instead of RFC 9562's `10`). Decoding needs the key; without it an id is 122 random-looking
//! bits.
//!
//! Ids handed out before the key existed stay valid and stable: those of messages below the
//! key's `since_message` are still rendered (and always decoded) in the plain layout, told
//! apart by their variant. Ids of notifications stored before the message layout are random
//! (versions 4 and 7); they are kept as they were and looked up through their own index.

use sha2::{Digest, Sha256};
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

    /// The plain layout, as ids were handed out before the key (see [`IdKey`]).
    pub fn to_uuid(self) -> Uuid {
        Uuid::new_v8(spread(self.payload()).to_be_bytes())
    }

    /// The parts of an id made by [`NotificationId::to_uuid`]; `None` for any other UUID
    /// (a random one from before this layout, or one a client made up).
    pub fn from_uuid(id: &Uuid) -> Option<Self> {
        if id.get_version_num() != 8 || id.get_variant() != uuid::Variant::RFC4122 {
            return None;
        }
        Some(Self::from_payload(gather(id.as_u128())))
    }
}

/// The key of the id permutation: random, created once per deployment (in the database, so
/// every replica has the same), and the first message whose ids are encrypted with it.
#[derive(Clone)]
pub struct IdKey {
    /// SHA-256 with the key already absorbed: each round hashes only its block.
    keyed: Sha256,
    since_message: i64,
}

impl std::fmt::Debug for IdKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdKey")
            .field("since_message", &self.since_message)
            .finish_non_exhaustive()
    }
}

/// Each half of the Feistel network: 61 bits, two of them the 122 payload bits.
const HALF_BITS: u32 = 61;
const HALF_MASK: u128 = (1u128 << HALF_BITS) - 1;
/// Four rounds of a pseudo-random function make a pseudo-random permutation (Luby–Rackoff).
const ROUNDS: u8 = 4;

impl IdKey {
    pub fn new(key: &[u8], since_message: i64) -> Self {
        let mut keyed = Sha256::new();
        keyed.update((key.len() as u64).to_be_bytes());
        keyed.update(key);
        Self {
            keyed,
            since_message,
        }
    }

    /// Ids of messages below this are the plain ones handed out before the key existed.
    pub fn since_message(&self) -> i64 {
        self.since_message
    }

    fn round(&self, round: u8, half: u128) -> u128 {
        let mut h = self.keyed.clone();
        h.update([round]);
        h.update((half as u64).to_be_bytes());
        let out = h.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&out[..8]);
        u128::from(u64::from_be_bytes(first)) & HALF_MASK
    }

    fn encrypt(&self, payload: u128) -> u128 {
        let (mut l, mut r) = (payload >> HALF_BITS, payload & HALF_MASK);
        for round in 0..ROUNDS {
            (l, r) = (r, l ^ self.round(round, r));
        }
        (l << HALF_BITS) | r
    }

    fn decrypt(&self, payload: u128) -> u128 {
        let (mut l, mut r) = (payload >> HALF_BITS, payload & HALF_MASK);
        for round in (0..ROUNDS).rev() {
            (l, r) = (r ^ self.round(round, l), l);
        }
        (l << HALF_BITS) | r
    }
}

/// The variant bits (bits 62..64) of an encrypted id: `11`, where a plain one has RFC
/// 9562's `10`.
const KEYED_VARIANT: u128 = 0b11;

impl NotificationId {
    fn payload(self) -> u128 {
        ((self.message as u128) << (ORDINAL_BITS + SEQ_BITS))
            | ((self.ordinal as u128) << SEQ_BITS)
            | (self.seq as u128)
    }

    fn from_payload(payload: u128) -> Self {
        let seq_mask = (1u128 << SEQ_BITS) - 1;
        let ordinal_mask = (1u128 << ORDINAL_BITS) - 1;
        Self {
            message: (payload >> (ORDINAL_BITS + SEQ_BITS)) as i64,
            ordinal: ((payload >> SEQ_BITS) & ordinal_mask) as u32,
            seq: (payload & seq_mask) as i64,
        }
    }

    /// The id as handed out: encrypted with `key`, or plain for a message from before it.
    pub fn render(self, key: &IdKey) -> Uuid {
        if self.message < key.since_message {
            return self.to_uuid();
        }
        let raw = spread(key.encrypt(self.payload()))
            | (8u128 << VERSION_SHIFT)
            | (KEYED_VARIANT << VARIANT_SHIFT);
        Uuid::from_u128(raw)
    }

    /// The parts of an id made by [`NotificationId::render`] (encrypted or plain); `None`
    /// for any other UUID.
    pub fn decode(id: &Uuid, key: &IdKey) -> Option<Self> {
        let raw = id.as_u128();
        if (raw >> VERSION_SHIFT) & 0xf != 8 {
            return None;
        }
        if (raw >> VARIANT_SHIFT) & 0b11 == KEYED_VARIANT {
            return Some(Self::from_payload(key.decrypt(gather(raw))));
        }
        Self::from_uuid(id)
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

    fn key() -> IdKey {
        IdKey::new(b"a key of thirty-two bytes, fixed", 100)
    }

    #[test]
    fn the_permutation_round_trips_and_is_keyed() {
        let k = key();
        let other = IdKey::new(b"another key of thirty-two bytes!", 100);
        let max = (1u128 << (2 * HALF_BITS)) - 1;
        for p in [0, 1, 2, 12345, max, max - 1, 1u128 << 100] {
            assert_eq!(k.decrypt(k.encrypt(p)), p);
            assert!(k.encrypt(p) <= max, "stays in 122 bits");
            assert_ne!(k.encrypt(p), other.encrypt(p), "the key matters");
        }
    }

    #[test]
    fn consecutive_ids_reveal_no_order_or_count() {
        let k = key();
        let ids: Vec<u128> = (100..164)
            .map(|m| NotificationId::new(m, 0, 1).unwrap().render(&k).as_u128())
            .collect();
        // Not increasing, and they differ in about half their bits, as random ones would.
        assert!(ids.windows(2).any(|w| w[0] > w[1]));
        let flips: u32 = ids.windows(2).map(|w| (w[0] ^ w[1]).count_ones()).sum();
        let mean = f64::from(flips) / 63.0;
        assert!(
            (45.0..77.0).contains(&mean),
            "{mean} bits differ on average"
        );
        // The message id is nowhere in plain sight.
        let plain = NotificationId::new(100, 0, 1).unwrap().to_uuid();
        assert_ne!(ids[0], plain.as_u128());
    }

    #[test]
    fn encrypted_and_plain_ids_both_decode() {
        let k = key();
        for (m, o, s) in [
            (100, 0, 1),
            (5000, 7, 42),
            ((1i64 << MESSAGE_BITS) - 1, u32::MAX, 9),
        ] {
            let id = NotificationId::new(m, o, s).unwrap();
            let uuid = id.render(&k);
            assert_eq!(uuid.get_version_num(), 8);
            assert_eq!((uuid.as_u128() >> VARIANT_SHIFT) & 0b11, KEYED_VARIANT);
            assert_eq!(NotificationId::decode(&uuid, &k), Some(id), "{uuid}");
            // An id handed out before the key (plain layout) still resolves.
            assert_eq!(NotificationId::decode(&id.to_uuid(), &k), Some(id));
        }
        // Messages from before the key keep the ids they were handed out with.
        let old = NotificationId::new(99, 0, 3).unwrap();
        assert_eq!(old.render(&k), old.to_uuid());
        assert!(NotificationId::decode(&Uuid::new_v4(), &k).is_none());
        assert!(NotificationId::decode(&Uuid::now_v7(), &k).is_none());
    }

    #[test]
    fn random_ids_are_not_taken_for_derived_ones() {
        assert!(NotificationId::from_uuid(&Uuid::new_v4()).is_none());
        assert!(NotificationId::from_uuid(&Uuid::now_v7()).is_none());
        assert!(NotificationId::from_uuid(&Uuid::nil()).is_none());
    }
}

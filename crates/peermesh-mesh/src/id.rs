//! Node ids: 160-bit numbers compared by XOR distance, as in Kademlia and peer-relay.

use std::fmt;
use std::str::FromStr;

use serde_json::Value;

use crate::manager::PeerKey;

/// Length of a node id in bytes.
pub const ID_LEN: usize = 20;

/// Number of k-buckets: one per bit of the id.
pub const BUCKETS: usize = ID_LEN * 8;

/// A node's 160-bit id. Its text form is 40 lowercase hex digits; ids order as big-endian
/// numbers (like Node's `Buffer.compare`, which peer-relay uses to break ties).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub [u8; ID_LEN]);

/// Why a text is not a node id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a node id is 40 hex digits (160 bits); got {got}")]
pub struct IdError {
    got: String,
}

impl IdError {
    fn new(input: &str) -> Self {
        let shown: String = input.chars().take(48).collect();
        let got = if shown.len() < input.len() {
            format!("{} characters starting {shown:?}", input.chars().count())
        } else {
            format!("{shown:?}")
        };
        Self { got }
    }
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl NodeId {
    /// A random id.
    pub fn random(rng: &mut impl rand::Rng) -> Self {
        let mut b = [0u8; ID_LEN];
        rng.fill(&mut b[..]);
        Self(b)
    }

    /// Parses 40 hex digits (either case).
    pub fn from_hex(s: &str) -> Result<Self, IdError> {
        let b = s.as_bytes();
        if b.len() != ID_LEN * 2 {
            return Err(IdError::new(s));
        }
        let mut out = [0u8; ID_LEN];
        for (i, pair) in b.chunks_exact(2).enumerate() {
            match (nibble(pair[0]), nibble(pair[1])) {
                (Some(h), Some(l)) => out[i] = h << 4 | l,
                _ => return Err(IdError::new(s)),
            }
        }
        Ok(Self(out))
    }

    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8; ID_LEN] {
        &self.0
    }

    /// Writes the 40 hex digits into `out`.
    pub fn write_hex(&self, out: &mut Vec<u8>) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for b in self.0 {
            out.push(DIGITS[usize::from(b >> 4)]);
            out.push(DIGITS[usize::from(b & 15)]);
        }
    }

    /// The XOR distance to `other`, as a big-endian number.
    pub fn distance(&self, other: &NodeId) -> [u8; ID_LEN] {
        let mut d = [0u8; ID_LEN];
        for (i, x) in d.iter_mut().enumerate() {
            *x = self.0[i] ^ other.0[i];
        }
        d
    }

    /// The k-bucket `other` falls in, seen from `self`: the index of the highest bit in which
    /// they differ (159 for the far half of the id space, 0 for the nearest neighbour), or
    /// `None` when they are equal.
    pub fn bucket_of(&self, other: &NodeId) -> Option<usize> {
        for i in 0..ID_LEN {
            let x = self.0[i] ^ other.0[i];
            if x != 0 {
                let bit_in_byte = 7 - x.leading_zeros() as usize;
                return Some((ID_LEN - 1 - i) * 8 + bit_in_byte);
            }
        }
        None
    }

    /// The two bits of the XOR distance just below bit `bucket`: which quarter of that
    /// bucket's id range `other` is in (0 to 3). Used to spread links over a bucket.
    pub fn quarter_in_bucket(&self, other: &NodeId, bucket: usize) -> u8 {
        let d = self.distance(other);
        let bit = |n: usize| -> u8 {
            if n >= BUCKETS {
                return 0;
            }
            let byte = ID_LEN - 1 - n / 8;
            (d[byte] >> (n % 8)) & 1
        };
        match bucket {
            0 => 0,
            1 => bit(0),
            b => bit(b - 1) << 1 | bit(b - 2),
        }
    }

    /// A random id in `bucket` as seen from `self`: it shares the bits above `bucket`, differs
    /// at `bucket`, and is random below.
    pub fn random_in_bucket(&self, bucket: usize, rng: &mut impl rand::Rng) -> NodeId {
        let bucket = bucket.min(BUCKETS - 1);
        let mut out = self.0;
        let byte = ID_LEN - 1 - bucket / 8;
        let bit = bucket % 8;
        // Flip the bucket bit, randomise every lower bit.
        let low_mask: u8 = ((1u16 << bit) - 1) as u8;
        let r: u8 = rng.random();
        out[byte] = (out[byte] ^ (1 << bit)) & !low_mask | (r & low_mask);
        for b in out.iter_mut().skip(byte + 1) {
            *b = rng.random();
        }
        NodeId(out)
    }

    /// The first four hex digits, for logs.
    pub fn short(&self) -> String {
        format!("{:02x}{:02x}", self.0[0], self.0[1])
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

impl FromStr for NodeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_hex(s)
    }
}

impl serde::Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        NodeId::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

impl PeerKey for NodeId {
    fn builtin_property(&self, name: &str) -> Option<Value> {
        (name == "id").then(|| Value::String(self.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    #[test]
    fn hex_round_trip_and_errors() {
        let s = "00112233445566778899aabbccddeeff01234567";
        let id = NodeId::from_hex(s).unwrap();
        assert_eq!(id.to_string(), s);
        assert_eq!(NodeId::from_hex(&s.to_uppercase()).unwrap(), id);
        assert!(NodeId::from_hex(&s[..39]).is_err());
        assert!(NodeId::from_hex("zz112233445566778899aabbccddeeff01234567").is_err());
        let e = NodeId::from_hex("é").unwrap_err().to_string();
        assert!(e.contains("40 hex digits"), "{e}");
    }

    #[test]
    fn buckets_count_from_the_far_half() {
        let zero = NodeId([0; ID_LEN]);
        let mut far = [0; ID_LEN];
        far[0] = 0x80;
        assert_eq!(zero.bucket_of(&NodeId(far)), Some(159));
        let mut near = [0; ID_LEN];
        near[ID_LEN - 1] = 1;
        assert_eq!(zero.bucket_of(&NodeId(near)), Some(0));
        assert_eq!(zero.bucket_of(&zero), None);
    }

    proptest! {
        #[test]
        fn random_in_bucket_lands_in_that_bucket(seed: u64, bucket in 0usize..BUCKETS) {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let me = NodeId::random(&mut rng);
            let other = me.random_in_bucket(bucket, &mut rng);
            prop_assert_eq!(me.bucket_of(&other), Some(bucket));
            prop_assert!(me.quarter_in_bucket(&other, bucket) < 4);
        }

        #[test]
        fn distance_orders_like_buckets(a: [u8; ID_LEN], b: [u8; ID_LEN], c: [u8; ID_LEN]) {
            let (a, b, c) = (NodeId(a), NodeId(b), NodeId(c));
            if let (Some(x), Some(y)) = (a.bucket_of(&b), a.bucket_of(&c)) {
                if x < y {
                    prop_assert!(a.distance(&b) < a.distance(&c));
                }
            }
        }
    }
}

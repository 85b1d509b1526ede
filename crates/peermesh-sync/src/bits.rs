//! Bit-level writing and reading: the wire format packs flags, lane deltas and ids into as few
//! bits as they need.
//!
//! Two variable-length codes are used everywhere:
//!
//! - [`BitWriter::uvar`] for counts, ids and gaps: `0`+3 bits (below 8), `10`+8 bits,
//!   `110`+16 bits, `111`+64 bits;
//! - [`BitWriter::svar`] for signed changes (zig-zag, so small changes either way are short):
//!   `0` for no change, `10`+4 bits, `110`+8 bits, `1110`+12 bits, `11110`+16 bits,
//!   `11111`+64 bits.
//!
//! Reading past the end is an error ([`WireError::Truncated`]), never a panic.

/// A datagram, or part of one, that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The data ends before the field being read.
    #[error("the packet ends in the middle of a field (truncated or not a peermesh-sync packet)")]
    Truncated,
    /// A field holds a value that cannot be right.
    #[error("bad packet field `{field}`: {reason}")]
    Bad {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A value does not fit the bits its component declares.
    #[error("component {component} lane value {value} does not fit in {bits} bits; quantise it to the declared range")]
    LaneOverflow {
        /// The component's wire id.
        component: u16,
        /// The value.
        value: u64,
        /// The declared bits.
        bits: u8,
    },
}

impl WireError {
    pub(crate) fn bad(field: &'static str, reason: &'static str) -> Self {
        WireError::Bad { field, reason }
    }
}

/// Appends bits, most significant first within each byte.
#[derive(Debug, Default, Clone)]
pub struct BitWriter {
    buf: Vec<u8>,
    acc: u64,
    n: u32,
}

impl BitWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty writer that reuses `buf`'s allocation.
    pub fn with_buffer(mut buf: Vec<u8>) -> Self {
        buf.clear();
        Self { buf, acc: 0, n: 0 }
    }

    /// Writes the low `bits` bits of `value` (`bits` ≤ 64).
    pub fn bits(&mut self, value: u64, bits: u32) {
        debug_assert!(bits <= 64);
        if bits == 0 {
            return;
        }
        if bits > 32 {
            self.bits(value >> 32, bits - 32);
            self.bits(value & 0xffff_ffff, 32);
            return;
        }
        let v = value & ((1u64 << bits) - 1);
        self.acc = (self.acc << bits) | v;
        self.n += bits;
        while self.n >= 8 {
            self.n -= 8;
            self.buf.push((self.acc >> self.n) as u8);
        }
        self.acc &= (1u64 << self.n) - 1;
    }

    /// Writes one bit.
    pub fn bit(&mut self, b: bool) {
        self.bits(u64::from(b), 1);
    }

    /// Writes an unsigned number in the short code of the [module docs](self).
    pub fn uvar(&mut self, v: u64) {
        if v < 8 {
            self.bits(v, 4);
        } else if v < 256 {
            self.bits(0b10, 2);
            self.bits(v, 8);
        } else if v < 65_536 {
            self.bits(0b110, 3);
            self.bits(v, 16);
        } else {
            self.bits(0b111, 3);
            self.bits(v, 64);
        }
    }

    /// Writes a signed change in the zig-zag code of the [module docs](self).
    pub fn svar(&mut self, d: i64) {
        let z = ((d << 1) ^ (d >> 63)) as u64;
        if z == 0 {
            self.bits(0, 1);
        } else if z < 16 {
            self.bits(0b10, 2);
            self.bits(z, 4);
        } else if z < 256 {
            self.bits(0b110, 3);
            self.bits(z, 8);
        } else if z < 4096 {
            self.bits(0b1110, 4);
            self.bits(z, 12);
        } else if z < 65_536 {
            self.bits(0b11110, 5);
            self.bits(z, 16);
        } else {
            self.bits(0b11111, 5);
            self.bits(z, 64);
        }
    }

    /// Pads to a whole byte with zeros.
    pub fn align(&mut self) {
        if self.n > 0 {
            self.bits(0, 8 - self.n);
        }
    }

    /// Aligns, then appends bytes.
    pub fn bytes(&mut self, b: &[u8]) {
        self.align();
        self.buf.extend_from_slice(b);
    }

    /// Bits written so far.
    pub fn bit_len(&self) -> usize {
        self.buf.len() * 8 + self.n as usize
    }

    /// The bytes, the last one padded with zeros.
    pub fn finish(mut self) -> Vec<u8> {
        self.align();
        self.buf
    }
}

/// Reads what a [`BitWriter`] wrote.
#[derive(Debug, Clone)]
pub struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    /// A reader at the first bit of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    /// Reads `bits` bits (≤ 64).
    pub fn bits(&mut self, bits: u32) -> Result<u64, WireError> {
        if bits > 64 {
            return Err(WireError::bad("bits", "more than 64 bits in one field"));
        }
        if self.pos + bits as usize > self.data.len() * 8 {
            return Err(WireError::Truncated);
        }
        let mut v = 0u64;
        let mut left = bits;
        while left > 0 {
            let byte = self.data[self.pos / 8];
            let off = (self.pos % 8) as u32;
            let take = (8 - off).min(left);
            let chunk = (u64::from(byte) >> (8 - off - take)) & ((1u64 << take) - 1);
            v = (v << take) | chunk;
            left -= take;
            self.pos += take as usize;
        }
        Ok(v)
    }

    /// Reads one bit.
    pub fn bit(&mut self) -> Result<bool, WireError> {
        Ok(self.bits(1)? == 1)
    }

    /// Reads a [`BitWriter::uvar`].
    pub fn uvar(&mut self) -> Result<u64, WireError> {
        if !self.bit()? {
            return self.bits(3);
        }
        if !self.bit()? {
            return self.bits(8);
        }
        if !self.bit()? {
            return self.bits(16);
        }
        self.bits(64)
    }

    /// Reads a [`BitWriter::uvar`] that must fit `max`.
    pub fn uvar_max(&mut self, max: u64, field: &'static str) -> Result<u64, WireError> {
        let v = self.uvar()?;
        if v > max {
            return Err(WireError::bad(field, "larger than its limit"));
        }
        Ok(v)
    }

    /// Reads a [`BitWriter::svar`].
    pub fn svar(&mut self) -> Result<i64, WireError> {
        let z = if !self.bit()? {
            0
        } else if !self.bit()? {
            self.bits(4)?
        } else if !self.bit()? {
            self.bits(8)?
        } else if !self.bit()? {
            self.bits(12)?
        } else if !self.bit()? {
            self.bits(16)?
        } else {
            self.bits(64)?
        };
        Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    /// Skips to the next whole byte.
    pub fn align(&mut self) {
        self.pos = self.pos.div_ceil(8) * 8;
    }

    /// Aligns, then takes `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        self.align();
        let start = self.pos / 8;
        let end = start.checked_add(n).ok_or(WireError::Truncated)?;
        let b = self.data.get(start..end).ok_or(WireError::Truncated)?;
        self.pos = end * 8;
        Ok(b)
    }

    /// Aligns, then takes every byte left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.align();
        let start = (self.pos / 8).min(self.data.len());
        self.pos = self.data.len() * 8;
        &self.data[start..]
    }

    /// Whether fewer than 8 bits are left (the padding of the last byte).
    pub fn at_end(&self) -> bool {
        self.data.len() * 8 - self.pos < 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn codes_have_the_documented_sizes() {
        let size = |f: &dyn Fn(&mut BitWriter)| {
            let mut w = BitWriter::new();
            f(&mut w);
            w.bit_len()
        };
        assert_eq!(size(&|w| w.uvar(7)), 4);
        assert_eq!(size(&|w| w.uvar(255)), 10);
        assert_eq!(size(&|w| w.uvar(65_535)), 19);
        assert_eq!(size(&|w| w.svar(0)), 1);
        assert_eq!(size(&|w| w.svar(-8)), 6);
        assert_eq!(size(&|w| w.svar(127)), 11);
        assert_eq!(size(&|w| w.svar(-2000)), 16);
        assert_eq!(size(&|w| w.svar(-30_000)), 21);
        assert_eq!(size(&|w| w.svar(i64::MIN)), 69);
    }

    #[test]
    fn reading_past_the_end_is_an_error() {
        let mut r = BitReader::new(&[0xff]);
        assert_eq!(r.bits(4), Ok(15));
        assert_eq!(r.bits(5), Err(WireError::Truncated));
        assert_eq!(BitReader::new(&[0xff]).uvar(), Err(WireError::Truncated));
        assert_eq!(BitReader::new(&[1]).bytes(2), Err(WireError::Truncated));
    }

    #[derive(Debug, Clone)]
    enum Field {
        Bits(u64, u32),
        U(u64),
        S(i64),
        Bytes(Vec<u8>),
    }

    fn field() -> impl Strategy<Value = Field> {
        prop_oneof![
            (any::<u64>(), 0u32..=64)
                .prop_map(|(v, n)| Field::Bits(if n == 64 { v } else { v & ((1u64 << n) - 1) }, n)),
            any::<u64>().prop_map(Field::U),
            (0u64..300).prop_map(Field::U),
            any::<i64>().prop_map(Field::S),
            (-300i64..300).prop_map(Field::S),
            proptest::collection::vec(any::<u8>(), 0..8).prop_map(Field::Bytes),
        ]
    }

    proptest! {
        #[test]
        fn everything_written_reads_back(fields in proptest::collection::vec(field(), 0..40)) {
            let mut w = BitWriter::new();
            for f in &fields {
                match f {
                    Field::Bits(v, n) => w.bits(*v, *n),
                    Field::U(v) => w.uvar(*v),
                    Field::S(v) => w.svar(*v),
                    Field::Bytes(b) => w.bytes(b),
                }
            }
            let data = w.finish();
            let mut r = BitReader::new(&data);
            for f in &fields {
                match f {
                    Field::Bits(v, n) => prop_assert_eq!(r.bits(*n)?, *v),
                    Field::U(v) => prop_assert_eq!(r.uvar()?, *v),
                    Field::S(v) => prop_assert_eq!(r.svar()?, *v),
                    Field::Bytes(b) => prop_assert_eq!(r.bytes(b.len())?, &b[..]),
                }
            }
            prop_assert!(r.at_end());
        }

        #[test]
        fn any_bytes_decode_or_fail_cleanly(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut r = BitReader::new(&data);
            for _ in 0..64 {
                if r.svar().is_err() || r.uvar().is_err() {
                    break;
                }
            }
        }
    }
}

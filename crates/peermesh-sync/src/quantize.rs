//! Fixed-point quantisation: floats to integers of a chosen precision, 3D vectors, and unit
//! quaternions in "smallest three" form (the largest component is dropped and rebuilt from the
//! other three, which then fit in `[-1/√2, 1/√2]`).

/// A float range quantised to `bits` bits (at most 32).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantizer {
    min: f32,
    max: f32,
    bits: u32,
}

impl Quantizer {
    /// A quantiser of `[min, max]` with a step of at most `precision` (e.g. ±512 m at 1 mm:
    /// `Quantizer::with_precision(-512.0, 512.0, 0.001)`, 20 bits).
    pub fn with_precision(min: f32, max: f32, precision: f32) -> Self {
        let span = f64::from((max - min).abs().max(f32::MIN_POSITIVE));
        let steps = (span / f64::from(precision.abs().max(f32::MIN_POSITIVE))).ceil();
        let bits = (steps + 1.0).log2().ceil().clamp(1.0, 32.0) as u32;
        Self { min, max, bits }
    }

    /// A quantiser of `[min, max]` on `bits` bits (1 to 32).
    pub fn with_bits(min: f32, max: f32, bits: u32) -> Self {
        Self {
            min,
            max,
            bits: bits.clamp(1, 32),
        }
    }

    /// Bits per value.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    fn levels(&self) -> f64 {
        ((1u64 << self.bits) - 1) as f64
    }

    /// The step between two representable values.
    pub fn step(&self) -> f32 {
        (f64::from(self.max - self.min) / self.levels()) as f32
    }

    /// The integer for `v` (clamped to the range; NaN becomes `min`).
    pub fn encode(&self, v: f32) -> u32 {
        let v = if v.is_nan() {
            self.min
        } else {
            v.clamp(self.min, self.max)
        };
        let t = f64::from(v - self.min) / f64::from(self.max - self.min).max(f64::MIN_POSITIVE);
        (t * self.levels()).round() as u32
    }

    /// The value of an integer.
    pub fn decode(&self, q: u32) -> f32 {
        let q = f64::from(q.min(self.levels() as u32));
        (f64::from(self.min) + q / self.levels() * f64::from(self.max - self.min)) as f32
    }
}

/// Quantises a 3D vector, each axis with `q`.
pub fn encode_vec3(q: &Quantizer, v: [f32; 3]) -> [u32; 3] {
    v.map(|x| q.encode(x))
}

/// The vector of [`encode_vec3`].
pub fn decode_vec3(q: &Quantizer, v: [u32; 3]) -> [f32; 3] {
    v.map(|x| q.decode(x))
}

/// A unit quaternion `[x, y, z, w]` in smallest-three form: the index of the dropped (largest)
/// component and the other three, each on `bits` bits. The sign is chosen so the dropped one is
/// positive (q and -q are the same rotation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmallestThree {
    /// Which component was dropped (0..4).
    pub largest: u8,
    /// The other three, in order.
    pub rest: [u32; 3],
}

const INV_SQRT2: f32 = std::f32::consts::FRAC_1_SQRT_2;

/// Encodes a rotation (normalised first; a zero or non-finite quaternion becomes identity).
pub fn encode_rotation(q: [f32; 4], bits: u32) -> SmallestThree {
    let norm = q.iter().map(|c| c * c).sum::<f32>().sqrt();
    let q = if norm.is_finite() && norm > 1e-12 {
        q.map(|c| c / norm)
    } else {
        [0.0, 0.0, 0.0, 1.0]
    };
    let mut largest = 0;
    for i in 1..4 {
        if q[i].abs() > q[largest].abs() {
            largest = i;
        }
    }
    let sign = if q[largest] < 0.0 { -1.0 } else { 1.0 };
    let quant = Quantizer::with_bits(-INV_SQRT2, INV_SQRT2, bits);
    let mut rest = [0u32; 3];
    let mut j = 0;
    for (i, c) in q.iter().enumerate() {
        if i != largest {
            rest[j] = quant.encode(c * sign);
            j += 1;
        }
    }
    SmallestThree {
        largest: largest as u8,
        rest,
    }
}

/// The rotation of [`encode_rotation`], normalised.
pub fn decode_rotation(s: SmallestThree, bits: u32) -> [f32; 4] {
    let quant = Quantizer::with_bits(-INV_SQRT2, INV_SQRT2, bits);
    let three = s.rest.map(|r| quant.decode(r));
    let sum: f32 = three.iter().map(|c| c * c).sum();
    let dropped = (1.0 - sum).max(0.0).sqrt();
    let largest = usize::from(s.largest.min(3));
    let mut q = [0.0f32; 4];
    let mut j = 0;
    for (i, c) in q.iter_mut().enumerate() {
        if i == largest {
            *c = dropped;
        } else {
            *c = three[j];
            j += 1;
        }
    }
    let norm = q.iter().map(|c| c * c).sum::<f32>().sqrt().max(1e-12);
    q.map(|c| c / norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn half_a_kilometre_at_a_millimetre_takes_twenty_bits() {
        let q = Quantizer::with_precision(-512.0, 512.0, 0.001);
        assert_eq!(q.bits(), 20);
        assert!(q.step() <= 0.001);
        assert_eq!(q.decode(q.encode(-512.0)), -512.0);
        assert_eq!(q.decode(q.encode(1e9)), 512.0, "clamped");
        assert_eq!(q.decode(q.encode(f32::NAN)), -512.0);
    }

    proptest! {
        #[test]
        fn floats_come_back_within_half_a_step(v in -512.0f32..512.0) {
            let q = Quantizer::with_precision(-512.0, 512.0, 0.001);
            let back = q.decode(q.encode(v));
            prop_assert!((back - v).abs() <= q.step() / 2.0 + 1e-4, "{} -> {}", v, back);
        }

        #[test]
        fn vectors_come_back_within_a_millimetre(v in prop::array::uniform3(-512.0f32..512.0)) {
            let q = Quantizer::with_precision(-512.0, 512.0, 0.001);
            let back = decode_vec3(&q, encode_vec3(&q, v));
            for (a, b) in v.iter().zip(back) {
                prop_assert!((a - b).abs() <= 0.001);
            }
        }

        /// Any rotation survives smallest-three on 10 bits per component to within about
        /// half a degree (the angle between the original and the decoded quaternion).
        #[test]
        fn rotations_come_back_close(q in prop::array::uniform4(-1.0f32..1.0)) {
            prop_assume!(q.iter().map(|c| c * c).sum::<f32>() > 1e-3);
            let norm = q.iter().map(|c| c * c).sum::<f32>().sqrt();
            let unit = q.map(|c| c / norm);
            let s = encode_rotation(unit, 10);
            prop_assert!(s.largest < 4);
            let back = decode_rotation(s, 10);
            let dot: f32 = unit.iter().zip(back).map(|(a, b)| a * b).sum::<f32>().abs().min(1.0);
            let angle_deg = 2.0 * dot.acos().to_degrees();
            prop_assert!(angle_deg < 0.5, "{:?} -> {:?}: {} degrees", unit, back, angle_deg);
        }
    }

    #[test]
    fn degenerate_rotations_become_identity() {
        let back = decode_rotation(encode_rotation([0.0; 4], 10), 10);
        assert!((back[3] - 1.0).abs() < 1e-3, "{back:?}");
        let back = decode_rotation(encode_rotation([f32::NAN, 0.0, 0.0, 1.0], 10), 10);
        assert!((back[3] - 1.0).abs() < 1e-3, "{back:?}");
    }
}

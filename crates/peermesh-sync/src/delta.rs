//! Delta compression: a snapshot is sent as the changes against a baseline the receiver
//! already holds (the last one it acknowledged), or whole against no baseline.
//!
//! Records go in entity id order, each after the gap from the previous id: **update** (`0`)
//! for an entity in both with the same component types, a bit per component that changed and,
//! for lanes, a short signed change per lane; **full** (`10`) for a new entity or one whose
//! component types changed, with every lane in its declared bits (and one bit saying its
//! component types are those of the previous full record, the usual case, instead of the
//! list); **despawn** (`11`). An unchanged entity costs nothing.

use crate::bits::{BitReader, BitWriter, WireError};
use crate::schema::{ComponentId, Encoding, Schema};
use crate::snapshot::{EntityId, EntityView, PeerId, Snapshot, Value};

/// Largest bytes component (a `Var` value or a `Fixed` size).
pub const MAX_BLOB: usize = 4096;
/// Most entities in one snapshot.
pub const MAX_ENTITIES: usize = 1 << 20;

/// What an encoding wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeltaStats {
    /// Entities sent as changes.
    pub updated: u32,
    /// Entities sent whole.
    pub full: u32,
    /// Entities removed.
    pub despawned: u32,
}

fn write_owner(w: &mut BitWriter, owner: Option<PeerId>) {
    match owner {
        None => w.bit(false),
        Some(p) => {
            w.bit(true);
            w.uvar(u64::from(p.0));
        }
    }
}

fn read_owner(r: &mut BitReader<'_>) -> Result<Option<PeerId>, WireError> {
    if !r.bit()? {
        return Ok(None);
    }
    let p = r.uvar_max(u64::from(u32::MAX), "owner")?;
    Ok(Some(PeerId(p as u32)))
}

fn encoding(schema: &Schema, comp: ComponentId) -> Result<Encoding, WireError> {
    schema
        .component_encoding(comp)
        .ok_or_else(|| WireError::bad("component", "not registered in the schema"))
}

fn write_blob(w: &mut BitWriter, enc: Encoding, b: &[u8]) -> Result<(), WireError> {
    match enc {
        Encoding::Fixed(n) if usize::from(n) != b.len() => {
            return Err(WireError::bad(
                "component",
                "a fixed-size value has another size",
            ))
        }
        Encoding::Fixed(_) => {}
        Encoding::Var if b.len() > MAX_BLOB => {
            return Err(WireError::bad(
                "component",
                "a value is larger than 4096 bytes",
            ))
        }
        Encoding::Var => w.uvar(b.len() as u64),
        Encoding::Lanes { .. } => {
            return Err(WireError::bad(
                "component",
                "bytes given for a lanes component",
            ))
        }
    }
    for x in b {
        w.bits(u64::from(*x), 8);
    }
    Ok(())
}

fn read_blob(r: &mut BitReader<'_>, enc: Encoding, out: &mut Vec<u8>) -> Result<(), WireError> {
    let n = match enc {
        Encoding::Fixed(n) => usize::from(n),
        Encoding::Var => r.uvar_max(MAX_BLOB as u64, "component length")? as usize,
        Encoding::Lanes { .. } => return Err(WireError::bad("component", "not a bytes component")),
    };
    out.clear();
    for _ in 0..n {
        out.push(r.bits(8)? as u8);
    }
    Ok(())
}

fn check_lanes(comp: ComponentId, enc: Encoding, lanes: &[u32]) -> Result<u8, WireError> {
    let Encoding::Lanes { count, bits } = enc else {
        return Err(WireError::bad(
            "component",
            "lanes given for a bytes component",
        ));
    };
    if lanes.len() != usize::from(count) {
        return Err(WireError::bad("component", "wrong number of lanes"));
    }
    if bits < 32 {
        if let Some(v) = lanes.iter().find(|v| **v >> bits != 0) {
            return Err(WireError::LaneOverflow {
                component: comp.0,
                value: u64::from(*v),
                bits,
            });
        }
    }
    Ok(bits)
}

fn write_full(
    schema: &Schema,
    w: &mut BitWriter,
    e: EntityView<'_>,
    shape: &mut Vec<ComponentId>,
) -> Result<(), WireError> {
    write_owner(w, e.owner());
    let same = e.component_count() == shape.len()
        && e.components().zip(shape.iter()).all(|((c, _), s)| c == *s);
    w.bit(same);
    if !same {
        shape.clear();
        shape.extend(e.components().map(|(c, _)| c));
        w.uvar(shape.len() as u64);
        let mut prev: i64 = -1;
        for c in shape.iter() {
            w.uvar((i64::from(c.0) - prev - 1) as u64);
            prev = i64::from(c.0);
        }
    }
    for (comp, v) in e.components() {
        let enc = encoding(schema, comp)?;
        match v {
            Value::Lanes(l) => {
                let bits = check_lanes(comp, enc, l)?;
                for x in l {
                    w.bits(u64::from(*x), u32::from(bits));
                }
            }
            Value::Bytes(b) => write_blob(w, enc, b)?,
        }
    }
    Ok(())
}

fn write_update(
    schema: &Schema,
    w: &mut BitWriter,
    base: EntityView<'_>,
    cur: EntityView<'_>,
) -> Result<(), WireError> {
    if base.owner() == cur.owner() {
        w.bit(false);
    } else {
        w.bit(true);
        write_owner(w, cur.owner());
    }
    for ((comp, bv), (_, cv)) in base.components().zip(cur.components()) {
        if bv == cv {
            w.bit(false);
            continue;
        }
        w.bit(true);
        let enc = encoding(schema, comp)?;
        match (bv, cv) {
            (Value::Lanes(b), Value::Lanes(c)) => {
                check_lanes(comp, enc, c)?;
                for (x, y) in b.iter().zip(c) {
                    w.svar(i64::from(*y) - i64::from(*x));
                }
            }
            (_, Value::Bytes(c)) => write_blob(w, enc, c)?,
            (Value::Bytes(_), Value::Lanes(_)) => {
                return Err(WireError::bad(
                    "component",
                    "changed kind without a full record",
                ))
            }
        }
    }
    Ok(())
}

/// Writes `cur` as changes against `base` (or whole, without one).
pub fn encode(
    schema: &Schema,
    base: Option<&Snapshot>,
    cur: &Snapshot,
    w: &mut BitWriter,
) -> Result<DeltaStats, WireError> {
    let empty = Snapshot::new(0);
    let base = base.unwrap_or(&empty);
    // First pass: count records (the decoder needs the count up front).
    let mut a = base.iter().peekable();
    let mut b = cur.iter().peekable();
    enum Rec<'s> {
        Update(EntityView<'s>, EntityView<'s>),
        Full(EntityView<'s>),
        Despawn(EntityId),
    }
    let mut recs: Vec<Rec<'_>> = Vec::new();
    loop {
        match (a.peek().copied(), b.peek().copied()) {
            (None, None) => break,
            (Some(x), None) => {
                recs.push(Rec::Despawn(x.id()));
                a.next();
            }
            (None, Some(y)) => {
                recs.push(Rec::Full(y));
                b.next();
            }
            (Some(x), Some(y)) => {
                if x.id() < y.id() {
                    recs.push(Rec::Despawn(x.id()));
                    a.next();
                } else if y.id() < x.id() {
                    recs.push(Rec::Full(y));
                    b.next();
                } else {
                    if x != y {
                        if x.same_shape(&y) {
                            recs.push(Rec::Update(x, y));
                        } else {
                            recs.push(Rec::Full(y));
                        }
                    }
                    a.next();
                    b.next();
                }
            }
        }
    }
    let mut stats = DeltaStats::default();
    let mut shape = Vec::new();
    w.uvar(recs.len() as u64);
    let mut next: u64 = 0;
    for rec in recs {
        let id = match &rec {
            Rec::Update(_, y) | Rec::Full(y) => y.id(),
            Rec::Despawn(id) => *id,
        };
        w.uvar(u64::from(id.0) - next);
        next = u64::from(id.0) + 1;
        match rec {
            Rec::Update(x, y) => {
                w.bit(false);
                write_update(schema, w, x, y)?;
                stats.updated += 1;
            }
            Rec::Full(y) => {
                w.bits(0b10, 2);
                write_full(schema, w, y, &mut shape)?;
                stats.full += 1;
            }
            Rec::Despawn(_) => {
                w.bits(0b11, 2);
                stats.despawned += 1;
            }
        }
    }
    Ok(stats)
}

/// Reads what [`encode`] wrote against the same `base`, giving the snapshot of `tick`.
pub fn decode(
    schema: &Schema,
    base: Option<&Snapshot>,
    tick: u64,
    r: &mut BitReader<'_>,
) -> Result<Snapshot, WireError> {
    let empty = Snapshot::new(0);
    let base = base.unwrap_or(&empty);
    let mut out = Snapshot::new(tick);
    let n = r.uvar_max(MAX_ENTITIES as u64, "record count")?;
    let mut base_iter = base.iter().peekable();
    let mut next: u64 = 0;
    let mut blob = Vec::new();
    let mut lanes: Vec<u32> = Vec::new();
    let mut shape: Vec<ComponentId> = Vec::new();
    for _ in 0..n {
        let id = next
            .checked_add(r.uvar()?)
            .filter(|v| *v <= u64::from(u32::MAX))
            .ok_or_else(|| WireError::bad("entity", "id beyond 32 bits"))?;
        next = id + 1;
        let id = EntityId(id as u32);
        // Entities of the baseline before this one are unchanged.
        while let Some(e) = base_iter.peek().copied() {
            if e.id() >= id {
                break;
            }
            out.push_view(e);
            base_iter.next();
        }
        let old = base_iter.peek().copied().filter(|e| e.id() == id);
        if old.is_some() {
            base_iter.next();
        }
        if !r.bit()? {
            let Some(old) = old else {
                return Err(WireError::bad(
                    "entity",
                    "an update for an entity the baseline does not hold",
                ));
            };
            let owner = if r.bit()? {
                read_owner(r)?
            } else {
                old.owner()
            };
            out.push_entity(id, owner);
            for (comp, v) in old.components() {
                let changed = r.bit()?;
                match v {
                    Value::Lanes(l) if changed => {
                        lanes.clear();
                        let Encoding::Lanes { bits, .. } = encoding(schema, comp)? else {
                            return Err(WireError::bad(
                                "component",
                                "the baseline's kind differs from the schema",
                            ));
                        };
                        for x in l {
                            let y = i64::from(*x).checked_add(r.svar()?).unwrap_or(-1);
                            if y < 0 || (bits < 32 && y >> bits != 0) || y > i64::from(u32::MAX) {
                                return Err(WireError::bad(
                                    "component",
                                    "a lane change leaves the declared range",
                                ));
                            }
                            lanes.push(y as u32);
                        }
                        out.push_lanes(comp, &lanes);
                    }
                    Value::Bytes(_) if changed => {
                        read_blob(r, encoding(schema, comp)?, &mut blob)?;
                        out.push_bytes(comp, &blob);
                    }
                    Value::Lanes(l) => out.push_lanes(comp, l),
                    Value::Bytes(b) => out.push_bytes(comp, b),
                }
            }
        } else if !r.bit()? {
            let owner = read_owner(r)?;
            if !r.bit()? {
                let count = r.uvar_max(schema.component_count() as u64, "component count")?;
                shape.clear();
                let mut next_comp: u64 = 0;
                for _ in 0..count {
                    let c = next_comp
                        .checked_add(r.uvar()?)
                        .filter(|c| *c < schema.component_count() as u64)
                        .ok_or_else(|| {
                            WireError::bad("component", "not registered in the schema")
                        })?;
                    next_comp = c + 1;
                    shape.push(ComponentId(c as u16));
                }
            }
            out.push_entity(id, owner);
            for &comp in &shape {
                match encoding(schema, comp)? {
                    Encoding::Lanes { count, bits } => {
                        lanes.clear();
                        for _ in 0..count {
                            lanes.push(r.bits(u32::from(bits))? as u32);
                        }
                        out.push_lanes(comp, &lanes);
                    }
                    enc => {
                        read_blob(r, enc, &mut blob)?;
                        out.push_bytes(comp, &blob);
                    }
                }
            }
        } else if old.is_none() {
            return Err(WireError::bad(
                "entity",
                "a despawn of an entity the baseline does not hold",
            ));
        }
    }
    for e in base_iter {
        out.push_view(e);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn schema() -> Schema {
        let mut s = Schema::new();
        s.component("pos", Encoding::Lanes { count: 3, bits: 20 }, true)
            .expect("pos");
        s.component("name", Encoding::Var, false).expect("name");
        s.component("hp", Encoding::Fixed(2), false).expect("hp");
        s.freeze();
        s
    }

    type Ent = (
        u32,
        Option<u32>,
        Option<[u32; 3]>,
        Option<Vec<u8>>,
        Option<[u8; 2]>,
    );

    fn snap(tick: u64, ents: &[Ent]) -> Snapshot {
        let mut s = Snapshot::new(tick);
        for (id, owner, pos, name, hp) in ents {
            s.push_entity(EntityId(*id), owner.map(PeerId));
            if let Some(p) = pos {
                s.push_lanes(ComponentId(0), p);
            }
            if let Some(n) = name {
                s.push_bytes(ComponentId(1), n);
            }
            if let Some(h) = hp {
                s.push_bytes(ComponentId(2), h);
            }
        }
        s.seal();
        s
    }

    fn roundtrip(base: Option<&Snapshot>, cur: &Snapshot) -> (Snapshot, usize) {
        let sc = schema();
        let mut w = BitWriter::new();
        encode(&sc, base, cur, &mut w).expect("encode");
        let bytes = w.finish();
        let got = decode(&sc, base, cur.tick(), &mut BitReader::new(&bytes)).expect("decode");
        (got, bytes.len())
    }

    #[test]
    fn an_unchanged_world_costs_one_byte_and_small_moves_are_small() {
        let ents: Vec<Ent> = (0..100)
            .map(|i| (i * 2, None, Some([500_000, 500_000 + i, 7]), None, None))
            .collect();
        let a = snap(1, &ents);
        let (got, n) = roundtrip(Some(&a), &snap(2, &ents));
        assert_eq!(got, snap(2, &ents));
        assert_eq!(n, 1);
        let moved: Vec<Ent> = ents
            .iter()
            .map(|(i, o, p, n, h)| {
                (
                    *i,
                    *o,
                    p.map(|p| [p[0] + 10, p[1], p[2] - 3]),
                    n.clone(),
                    *h,
                )
            })
            .collect();
        let (got, n) = roundtrip(Some(&a), &snap(2, &moved));
        assert_eq!(got, snap(2, &moved));
        // Per entity: gap 4 bits, tag 1, owner 1, changed 1, lanes 11 + 1 + 6 = 25 bits.
        assert!(
            n <= (100 * 25usize).div_ceil(8) + 1,
            "{n} bytes for 100 small moves"
        );
        let (_, whole) = roundtrip(None, &snap(2, &moved));
        assert!(whole >= 100 * 8, "{whole}");
    }

    #[test]
    fn values_outside_the_declared_bits_are_refused() {
        let sc = schema();
        let bad = snap(1, &[(1, None, Some([1 << 20, 0, 0]), None, None)]);
        let e = encode(&sc, None, &bad, &mut BitWriter::new()).expect_err("overflow");
        assert!(matches!(e, WireError::LaneOverflow { bits: 20, .. }), "{e}");
    }

    #[test]
    fn updates_against_a_missing_entity_are_errors() {
        let sc = schema();
        let a = snap(1, &[(5, None, Some([1, 2, 3]), None, None)]);
        let b = snap(2, &[(5, None, Some([2, 2, 3]), None, None)]);
        let mut w = BitWriter::new();
        encode(&sc, Some(&a), &b, &mut w).expect("encode");
        let bytes = w.finish();
        assert!(decode(&sc, None, 2, &mut BitReader::new(&bytes)).is_err());
    }

    fn ent() -> impl Strategy<Value = Ent> {
        (
            0u32..40,
            proptest::option::of(0u32..4),
            proptest::option::of(proptest::array::uniform3(0u32..(1 << 20))),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..6)),
            proptest::option::of(any::<[u8; 2]>()),
        )
    }

    proptest! {
        #[test]
        fn any_change_between_any_two_worlds_round_trips(
            a in proptest::collection::vec(ent(), 0..30),
            b in proptest::collection::vec(ent(), 0..30),
            with_base in any::<bool>(),
        ) {
            let (a, b) = (snap(1, &a), snap(2, &b));
            let base = with_base.then_some(&a);
            let (got, _) = roundtrip(base, &b);
            prop_assert_eq!(got.digest(), b.digest());
            prop_assert_eq!(got, b);
        }

        #[test]
        fn any_bytes_decode_or_fail_cleanly(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let sc = schema();
            let base = snap(1, &[(3, None, Some([1, 2, 3]), Some(vec![1]), None)]);
            let _ = decode(&sc, Some(&base), 2, &mut BitReader::new(&data));
            let _ = decode(&sc, None, 2, &mut BitReader::new(&data));
        }
    }
}

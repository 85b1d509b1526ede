//! The replicated state of one tick: entities, their owners and their components, in one flat
//! layout (a few vectors per snapshot, none per entity) so that the host can capture, filter
//! and share a snapshot every tick.
//!
//! Build one with [`Snapshot::push_entity`] and [`Snapshot::push_lanes`] /
//! [`Snapshot::push_bytes`], then [`Snapshot::seal`] it; read it with [`Snapshot::get`] and
//! [`Snapshot::iter`].

use crate::schema::ComponentId;

/// An entity's id, chosen by the host's world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityId(pub u32);

/// A peer of a session: the host gives each client its own, from 1 (0 is the host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u32);

impl PeerId {
    /// The host.
    pub const HOST: PeerId = PeerId(0);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) id: EntityId,
    pub(crate) owner: Option<PeerId>,
    pub(crate) first: u32,
    pub(crate) count: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) comp: ComponentId,
    pub(crate) blob: bool,
    pub(crate) start: u32,
    pub(crate) len: u32,
}

/// A component's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// Integer lanes (a [`Lanes`](crate::Encoding::Lanes) component).
    Lanes(&'a [u32]),
    /// Bytes (a [`Fixed`](crate::Encoding::Fixed) or [`Var`](crate::Encoding::Var) component).
    Bytes(&'a [u8]),
}

/// The state of every entity at one tick; see the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    tick: u64,
    pub(crate) entities: Vec<Meta>,
    pub(crate) slots: Vec<Slot>,
    pub(crate) lanes: Vec<u32>,
    pub(crate) blobs: Vec<u8>,
    sorted: bool,
}

impl PartialEq for Snapshot {
    fn eq(&self, other: &Self) -> bool {
        self.tick == other.tick
            && self.len() == other.len()
            && self.iter().zip(other.iter()).all(|(a, b)| a == b)
    }
}

impl Snapshot {
    /// An empty snapshot of `tick`.
    pub fn new(tick: u64) -> Self {
        Self {
            tick,
            sorted: true,
            ..Self::default()
        }
    }

    /// Empties the snapshot for `tick`, keeping its allocations.
    pub fn clear(&mut self, tick: u64) {
        self.tick = tick;
        self.entities.clear();
        self.slots.clear();
        self.lanes.clear();
        self.blobs.clear();
        self.sorted = true;
    }

    /// The tick this is the state of.
    pub fn tick(&self) -> u64 {
        self.tick
    }

    /// Sets the tick.
    pub fn set_tick(&mut self, tick: u64) {
        self.tick = tick;
    }

    /// Number of entities.
    pub fn len(&self) -> usize {
        self.entities.len()
    }

    /// Whether there is no entity.
    pub fn is_empty(&self) -> bool {
        self.entities.is_empty()
    }

    /// Starts an entity; the components pushed next belong to it.
    pub fn push_entity(&mut self, id: EntityId, owner: Option<PeerId>) {
        if self.entities.last().is_some_and(|m| m.id >= id) {
            self.sorted = false;
        }
        self.entities.push(Meta {
            id,
            owner,
            first: self.slots.len() as u32,
            count: 0,
        });
    }

    fn push_slot(&mut self, comp: ComponentId, blob: bool, start: usize, len: usize) {
        let Some(meta) = self.entities.last_mut() else {
            return;
        };
        // Components of an entity are kept in id order; one value per component (last wins).
        let first = meta.first as usize;
        let slot = Slot {
            comp,
            blob,
            start: start as u32,
            len: len as u32,
        };
        let mine = &mut self.slots[first..];
        match mine.binary_search_by_key(&comp, |s| s.comp) {
            Ok(i) => mine[i] = slot,
            Err(i) => {
                self.slots.insert(first + i, slot);
                meta.count += 1;
            }
        }
    }

    /// Adds a lanes component to the entity last pushed (ignored before any entity).
    pub fn push_lanes(&mut self, comp: ComponentId, lanes: &[u32]) {
        let start = self.lanes.len();
        self.lanes.extend_from_slice(lanes);
        self.push_slot(comp, false, start, lanes.len());
    }

    /// Adds a bytes component to the entity last pushed (ignored before any entity).
    pub fn push_bytes(&mut self, comp: ComponentId, bytes: &[u8]) {
        let start = self.blobs.len();
        self.blobs.extend_from_slice(bytes);
        self.push_slot(comp, true, start, bytes.len());
    }

    /// Copies an entity of another snapshot in (after the entities pushed so far).
    pub fn push_view(&mut self, e: EntityView<'_>) {
        self.push_entity(e.id(), e.owner());
        for (comp, v) in e.components() {
            match v {
                Value::Lanes(l) => self.push_lanes(comp, l),
                Value::Bytes(b) => self.push_bytes(comp, b),
            }
        }
    }

    /// Puts the entities in id order (needed when they were pushed out of order); of two
    /// entities with one id, the one pushed last stays.
    pub fn seal(&mut self) {
        if self.sorted {
            return;
        }
        // Stable sort keeps push order among equal ids; keep the last of each run.
        self.entities.sort_by_key(|m| m.id);
        let mut out: Vec<Meta> = Vec::with_capacity(self.entities.len());
        for m in self.entities.drain(..) {
            match out.last_mut() {
                Some(last) if last.id == m.id => *last = m,
                _ => out.push(m),
            }
        }
        self.entities = out;
        self.sorted = true;
    }

    fn view(&self, i: usize) -> EntityView<'_> {
        EntityView {
            snap: self,
            meta: self.entities[i],
        }
    }

    /// The entity `id`, if present.
    pub fn get(&self, id: EntityId) -> Option<EntityView<'_>> {
        debug_assert!(self.sorted, "seal() the snapshot before reading it");
        let i = self.entities.binary_search_by_key(&id, |m| m.id).ok()?;
        Some(self.view(i))
    }

    /// Every entity, in id order.
    pub fn iter(&self) -> impl Iterator<Item = EntityView<'_>> + '_ {
        (0..self.entities.len()).map(|i| self.view(i))
    }

    /// A new snapshot with the entities `keep` accepts.
    pub fn filtered(&self, mut keep: impl FnMut(EntityView<'_>) -> bool) -> Snapshot {
        let mut out = Snapshot::new(self.tick);
        for e in self.iter() {
            if keep(e) {
                out.push_view(e);
            }
        }
        out
    }

    /// A 64-bit digest (FNV-1a) of the tick's entities, owners and component values: two
    /// peers with the same digest hold the same state.
    pub fn digest(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        for e in self.iter() {
            eat(&e.id().0.to_le_bytes());
            eat(&e.owner().map_or(u32::MAX, |p| p.0).to_le_bytes());
            for (c, v) in e.components() {
                eat(&c.0.to_le_bytes());
                match v {
                    Value::Lanes(l) => {
                        eat(b"L");
                        for x in l {
                            eat(&x.to_le_bytes());
                        }
                    }
                    Value::Bytes(b) => {
                        eat(b"B");
                        eat(&(b.len() as u32).to_le_bytes());
                        eat(b);
                    }
                }
            }
        }
        h
    }
}

/// One entity of a [`Snapshot`].
#[derive(Debug, Clone, Copy)]
pub struct EntityView<'a> {
    snap: &'a Snapshot,
    meta: Meta,
}

impl PartialEq for EntityView<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.meta.id == other.meta.id
            && self.meta.owner == other.meta.owner
            && self.same_components(other)
    }
}

impl<'a> EntityView<'a> {
    /// Its id.
    pub fn id(&self) -> EntityId {
        self.meta.id
    }

    /// The peer that owns it (predicts it), if any.
    pub fn owner(&self) -> Option<PeerId> {
        self.meta.owner
    }

    fn slots(&self) -> &'a [Slot] {
        let s = self.meta.first as usize;
        &self.snap.slots[s..s + self.meta.count as usize]
    }

    fn value(&self, s: &Slot) -> Value<'a> {
        let (a, b) = (s.start as usize, (s.start + s.len) as usize);
        if s.blob {
            Value::Bytes(&self.snap.blobs[a..b])
        } else {
            Value::Lanes(&self.snap.lanes[a..b])
        }
    }

    /// Its components in id order.
    pub fn components(&self) -> impl Iterator<Item = (ComponentId, Value<'a>)> + 'a {
        let this = *self;
        self.slots().iter().map(move |s| (s.comp, this.value(s)))
    }

    /// How many components it has.
    pub fn component_count(&self) -> usize {
        self.meta.count as usize
    }

    /// A component's value.
    pub fn get(&self, comp: ComponentId) -> Option<Value<'a>> {
        let slots = self.slots();
        let i = slots.binary_search_by_key(&comp, |s| s.comp).ok()?;
        Some(self.value(&slots[i]))
    }

    /// A lanes component's lanes.
    pub fn lanes(&self, comp: ComponentId) -> Option<&'a [u32]> {
        match self.get(comp)? {
            Value::Lanes(l) => Some(l),
            Value::Bytes(_) => None,
        }
    }

    /// A bytes component's bytes.
    pub fn bytes(&self, comp: ComponentId) -> Option<&'a [u8]> {
        match self.get(comp)? {
            Value::Bytes(b) => Some(b),
            Value::Lanes(_) => None,
        }
    }

    /// Whether both have the same component types (values aside).
    pub fn same_shape(&self, other: &EntityView<'_>) -> bool {
        let (a, b) = (self.slots(), other.slots());
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.comp == y.comp && x.blob == y.blob && x.len == y.len)
    }

    /// Whether both have the same components with the same values.
    pub fn same_components(&self, other: &EntityView<'_>) -> bool {
        self.meta.count == other.meta.count
            && self
                .components()
                .zip(other.components())
                .all(|(a, b)| a == b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entities_pushed_out_of_order_are_sorted_and_the_last_duplicate_stays() {
        let mut s = Snapshot::new(7);
        s.push_entity(EntityId(5), None);
        s.push_lanes(ComponentId(1), &[1, 2, 3]);
        s.push_bytes(ComponentId(0), b"hi");
        s.push_entity(EntityId(2), Some(PeerId(3)));
        s.push_lanes(ComponentId(1), &[9]);
        s.push_entity(EntityId(5), None);
        s.push_lanes(ComponentId(1), &[4, 5, 6]);
        s.seal();
        let ids: Vec<u32> = s.iter().map(|e| e.id().0).collect();
        assert_eq!(ids, [2, 5]);
        let e = s.get(EntityId(5)).expect("5");
        assert_eq!(e.lanes(ComponentId(1)), Some(&[4, 5, 6][..]));
        assert_eq!(e.bytes(ComponentId(0)), None);
        assert_eq!(s.get(EntityId(2)).and_then(|e| e.owner()), Some(PeerId(3)));
    }

    #[test]
    fn components_are_kept_in_id_order_and_a_repeat_replaces() {
        let mut s = Snapshot::new(0);
        s.push_entity(EntityId(1), None);
        s.push_lanes(ComponentId(3), &[3]);
        s.push_lanes(ComponentId(1), &[1]);
        s.push_lanes(ComponentId(3), &[33]);
        let e = s.get(EntityId(1)).expect("1");
        let comps: Vec<u16> = e.components().map(|(c, _)| c.0).collect();
        assert_eq!(comps, [1, 3]);
        assert_eq!(e.lanes(ComponentId(3)), Some(&[33][..]));
    }

    #[test]
    fn digest_and_equality_follow_content() {
        let mk = |v: u32| {
            let mut s = Snapshot::new(1);
            s.push_entity(EntityId(1), None);
            s.push_lanes(ComponentId(0), &[v]);
            s
        };
        assert_eq!(mk(1).digest(), mk(1).digest());
        assert_ne!(mk(1).digest(), mk(2).digest());
        assert_eq!(mk(1), mk(1));
        assert_ne!(mk(1), mk(2));
        let f = mk(1).filtered(|_| false);
        assert!(f.is_empty());
    }
}

//! The replicated component types and the user action types of a session.
//!
//! Registration order fixes the wire ids (per kind, from 0), so host and clients must register
//! the same types in the same order. [`Schema::hash`] digests exactly that: names, order,
//! encodings and interpolation flags, never compiler type ids (which differ between builds), so
//! two peers built from different binaries agree when their schemas do. Registration closes
//! with [`Schema::freeze`], when the session starts.

/// How a type is encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// Always this many bytes.
    Fixed(u16),
    /// A length prefix, then the bytes.
    Var,
    /// `count` unsigned integer lanes (1 to 16) of `bits` bits each (1 to 32), such as a
    /// quantised position: sent as small signed changes against the baseline, and blended lane
    /// by lane when the component interpolates.
    Lanes {
        /// Lanes per value.
        count: u8,
        /// Bits per lane.
        bits: u8,
    },
}

/// The wire id of a component type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ComponentId(pub u16);

/// The wire id of an action type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ActionId(pub u16);

/// A registration that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// A lanes encoding outside 1 to 16 lanes of 1 to 32 bits.
    #[error("{0:?}: a lanes encoding needs 1 to 16 lanes of 1 to 32 bits each")]
    BadEncoding(String),
    /// The session already started: the schema is frozen.
    #[error("cannot register {0:?}: the session already started; register every type before it")]
    Frozen(String),
    /// The name is already registered for that kind.
    #[error("{0:?} is registered twice; each type needs its own name")]
    Duplicate(String),
    /// The name is empty, too long (more than 64 bytes) or has control characters.
    #[error("{0:?} is not a valid type name: use 1 to 64 bytes without control characters")]
    BadName(String),
    /// More than 65,536 types of one kind.
    #[error("too many types: at most 65,536 components and 65,536 actions")]
    TooMany,
    /// The peer's schema differs.
    #[error(
        "the peers registered different types (schema {ours:016x} here, {theirs:016x} there): \
         register the same components and actions, in the same order, on both"
    )]
    Mismatch {
        /// This side's hash.
        ours: u64,
        /// The peer's hash.
        theirs: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    name: String,
    encoding: Encoding,
    interpolate: bool,
}

/// The registered types; see the [module docs](self).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schema {
    components: Vec<Entry>,
    actions: Vec<Entry>,
    frozen: bool,
}

fn check_name(name: &str) -> Result<(), SchemaError> {
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(SchemaError::BadName(name.to_owned()));
    }
    Ok(())
}

impl Schema {
    /// An empty, open schema.
    pub fn new() -> Self {
        Self::default()
    }

    fn add(&mut self, kind_is_action: bool, entry: Entry) -> Result<u16, SchemaError> {
        if self.frozen {
            return Err(SchemaError::Frozen(entry.name));
        }
        check_name(&entry.name)?;
        let list = if kind_is_action {
            &mut self.actions
        } else {
            &mut self.components
        };
        if list.iter().any(|e| e.name == entry.name) {
            return Err(SchemaError::Duplicate(entry.name));
        }
        let id = u16::try_from(list.len()).map_err(|_| SchemaError::TooMany)?;
        list.push(entry);
        Ok(id)
    }

    /// Registers a replicated component type; `interpolate` says whether remote entities
    /// blend it linearly between ticks.
    pub fn component(
        &mut self,
        name: &str,
        encoding: Encoding,
        interpolate: bool,
    ) -> Result<ComponentId, SchemaError> {
        if let Encoding::Lanes { count, bits } = encoding {
            if !(1..=16).contains(&count) || !(1..=32).contains(&bits) {
                return Err(SchemaError::BadEncoding(name.to_owned()));
            }
        }
        let entry = Entry {
            name: name.to_owned(),
            encoding,
            interpolate,
        };
        self.add(false, entry).map(ComponentId)
    }

    /// Registers a user action type.
    pub fn action(&mut self, name: &str, encoding: Encoding) -> Result<ActionId, SchemaError> {
        let entry = Entry {
            name: name.to_owned(),
            encoding,
            interpolate: false,
        };
        self.add(true, entry).map(ActionId)
    }

    /// Closes registration (the session starts).
    pub fn freeze(&mut self) {
        self.frozen = true;
    }

    /// Whether registration is closed.
    pub fn is_frozen(&self) -> bool {
        self.frozen
    }

    /// The id of a registered component.
    pub fn component_id(&self, name: &str) -> Option<ComponentId> {
        let i = self.components.iter().position(|e| e.name == name)?;
        u16::try_from(i).ok().map(ComponentId)
    }

    /// The id of a registered action.
    pub fn action_id(&self, name: &str) -> Option<ActionId> {
        let i = self.actions.iter().position(|e| e.name == name)?;
        u16::try_from(i).ok().map(ActionId)
    }

    /// The number of registered component types.
    pub fn component_count(&self) -> usize {
        self.components.len()
    }

    /// The number of registered action types.
    pub fn action_count(&self) -> usize {
        self.actions.len()
    }

    /// The encoding of an action.
    pub fn action_encoding(&self, id: ActionId) -> Option<Encoding> {
        self.actions.get(usize::from(id.0)).map(|e| e.encoding)
    }

    /// The name of a component.
    pub fn component_name(&self, id: ComponentId) -> Option<&str> {
        self.components
            .get(usize::from(id.0))
            .map(|e| e.name.as_str())
    }

    /// The encoding of a component.
    pub fn component_encoding(&self, id: ComponentId) -> Option<Encoding> {
        self.components.get(usize::from(id.0)).map(|e| e.encoding)
    }

    /// Whether a component interpolates.
    pub fn interpolates(&self, id: ComponentId) -> bool {
        self.components
            .get(usize::from(id.0))
            .is_some_and(|e| e.interpolate)
    }

    /// A 64-bit digest (FNV-1a) of the names, order, encodings and interpolation flags.
    pub fn hash(&self) -> u64 {
        let mut h = Fnv::new();
        h.bytes(b"peermesh-sync schema 1");
        for (tag, list) in [(b'C', &self.components), (b'A', &self.actions)] {
            h.bytes(&[tag]);
            h.bytes(&(list.len() as u32).to_be_bytes());
            for e in list {
                h.bytes(&(e.name.len() as u32).to_be_bytes());
                h.bytes(e.name.as_bytes());
                match e.encoding {
                    Encoding::Fixed(n) => {
                        h.bytes(b"F");
                        h.bytes(&n.to_be_bytes());
                    }
                    Encoding::Var => h.bytes(b"V"),
                    Encoding::Lanes { count, bits } => {
                        h.bytes(b"L");
                        h.bytes(&[count, bits]);
                    }
                }
                h.bytes(&[u8::from(e.interpolate)]);
            }
        }
        h.finish()
    }

    /// Checks a peer's schema hash (at connect): `Mismatch` when they differ.
    pub fn check_peer(&self, theirs: u64) -> Result<(), SchemaError> {
        let ours = self.hash();
        if ours == theirs {
            Ok(())
        } else {
            Err(SchemaError::Mismatch { ours, theirs })
        }
    }
}

/// FNV-1a, 64 bits: stable across builds and platforms.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn game() -> Schema {
        let mut s = Schema::new();
        s.component("transform", Encoding::Fixed(12), true)
            .unwrap_or_else(|e| panic!("{e}"));
        s.component("health", Encoding::Fixed(2), false)
            .unwrap_or_else(|e| panic!("{e}"));
        s.action("move", Encoding::Fixed(4))
            .unwrap_or_else(|e| panic!("{e}"));
        s
    }

    #[test]
    fn ids_follow_registration_order_and_the_hash_sees_every_difference() {
        let s = game();
        assert_eq!(s.component_id("health"), Some(ComponentId(1)));
        assert_eq!(s.action_id("move"), Some(ActionId(0)));
        assert!(s.interpolates(ComponentId(0)) && !s.interpolates(ComponentId(1)));
        assert_eq!(s.hash(), game().hash(), "deterministic");
        assert_eq!(s.check_peer(game().hash()), Ok(()));
        // Order, encoding, interpolation and kind all change the hash.
        let mut reordered = Schema::new();
        reordered
            .component("health", Encoding::Fixed(2), false)
            .ok();
        reordered
            .component("transform", Encoding::Fixed(12), true)
            .ok();
        reordered.action("move", Encoding::Fixed(4)).ok();
        let mut other_enc = game();
        other_enc.action("jump", Encoding::Var).ok();
        let mut no_interp = Schema::new();
        no_interp
            .component("transform", Encoding::Fixed(12), false)
            .ok();
        no_interp
            .component("health", Encoding::Fixed(2), false)
            .ok();
        no_interp.action("move", Encoding::Fixed(4)).ok();
        let mut as_action = Schema::new();
        as_action
            .component("transform", Encoding::Fixed(12), true)
            .ok();
        as_action.action("health", Encoding::Fixed(2)).ok();
        as_action.action("move", Encoding::Fixed(4)).ok();
        for other in [reordered, other_enc, no_interp, as_action] {
            assert_ne!(s.hash(), other.hash());
            let e = s.check_peer(other.hash()).expect_err("mismatch");
            assert!(e.to_string().contains("same order"), "{e}");
        }
    }

    #[test]
    fn bad_registrations_are_refused() {
        let mut s = game();
        assert_eq!(
            s.component("health", Encoding::Var, false),
            Err(SchemaError::Duplicate("health".into()))
        );
        assert!(matches!(
            s.action("", Encoding::Var),
            Err(SchemaError::BadName(_))
        ));
        assert!(matches!(
            s.action(&"x".repeat(65), Encoding::Var),
            Err(SchemaError::BadName(_))
        ));
        // The same name may be a component and an action.
        assert!(s.action("health", Encoding::Var).is_ok());
        s.freeze();
        assert!(s.is_frozen());
        let e = s
            .component("late", Encoding::Var, false)
            .expect_err("frozen");
        assert!(e.to_string().contains("already started"), "{e}");
    }
}

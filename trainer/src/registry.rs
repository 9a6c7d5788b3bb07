//! The plugin registry: named components (models and their architecture presets, criterions,
//! optimizers, learning-rate schedulers, tasks) registered explicitly, as fairseq's
//! `register_*` decorators do, but without import-time magic.
//!
//! Each kind of component is a [`Catalog`] of factories. Registering a name twice is an
//! error; asking for an unknown name is an error that lists the known ones. Core components
//! are added by `register_builtins` functions; a plugin crate adds its own the same way
//! (`registry.criterions.register("my_loss", factory)`), with no change to the core crates.

use std::collections::BTreeMap;

/// Registry errors.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A name was registered twice in the same catalog.
    #[error("{kind} {name:?} is already registered")]
    Duplicate {
        /// The kind of component ("criterion", "optimizer", …).
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// A name that no component was registered under.
    #[error("unknown {kind} {name:?}; known: {}", known.join(", "))]
    Unknown {
        /// The kind of component.
        kind: &'static str,
        /// The name asked for.
        name: String,
        /// The registered names, sorted.
        known: Vec<String>,
    },
}

/// Named factories of one kind of component.
#[derive(Debug, Clone)]
pub struct Catalog<F> {
    kind: &'static str,
    entries: BTreeMap<String, F>,
}

impl<F> Catalog<F> {
    /// An empty catalog for components of `kind` (used in error messages).
    pub fn new(kind: &'static str) -> Self {
        Self { kind, entries: BTreeMap::new() }
    }

    /// Adds a factory under `name`; a name already present is an [`Error::Duplicate`].
    pub fn register(&mut self, name: &str, factory: F) -> Result<(), Error> {
        if self.entries.contains_key(name) {
            return Err(Error::Duplicate { kind: self.kind, name: name.to_string() });
        }
        self.entries.insert(name.to_string(), factory);
        Ok(())
    }

    /// The factory registered under `name`, or an [`Error::Unknown`] listing the known names.
    pub fn get(&self, name: &str) -> Result<&F, Error> {
        self.entries.get(name).ok_or_else(|| Error::Unknown {
            kind: self.kind,
            name: name.to_string(),
            known: self.names().map(str::to_string).collect(),
        })
    }

    /// Registered names in sorted order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Number of registered components.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_rejected_and_unknown_names_list_the_known_ones() {
        let mut catalog: Catalog<fn() -> u32> = Catalog::new("criterion");
        assert_eq!(catalog.register("cross_entropy", || 1), Ok(()));
        assert_eq!(catalog.register("label_smoothed_cross_entropy", || 2), Ok(()));
        assert!(matches!(catalog.register("cross_entropy", || 3), Err(Error::Duplicate { .. })));
        assert_eq!(catalog.get("cross_entropy").map(|f| f()), Ok(1));
        let err = catalog.get("ctc").err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(
            err,
            "unknown criterion \"ctc\"; known: cross_entropy, label_smoothed_cross_entropy"
        );
        assert_eq!(catalog.len(), 2);
    }
}

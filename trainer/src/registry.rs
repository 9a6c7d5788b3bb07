//! The plugin registry: named components (models and their architecture presets, criterions,
//! optimizers, learning-rate schedulers, tasks) registered explicitly, as fairseq's
//! `register_*` decorators do, but without import-time magic.
//!
//! Each kind of component is a [`Catalog`] of factories. Registering a name twice is an
//! error; asking for an unknown name is an error that lists the known ones. A [`Registry`]
//! holds one catalog per kind; [`Registry::with_builtins`] fills it with seqforge's own
//! components (each module's `builtin_*` list), and a plugin adds its own the same way
//! (`registry.criterions.register("my_loss", factory)`), with no change to the core crates.
//!
//! Models have two levels, as in fairseq: a *model* (`transformer`: a [`ModelFactory`] that
//! adds the model's flags and builds it) and named *architectures* (`transformer_tiny`, …: an
//! [`Architecture`], i.e. the model's name plus a preset config that the flags override).

use std::collections::BTreeMap;

use crate::criterions::{CriterionFactory, builtin_criterions};
use crate::optim::{
    LrSchedulerFactory, OptimizerFactory, builtin_lr_schedulers, builtin_optimizers,
};
pub use crate::tasks::{TaskFactory, builtin_tasks};
pub use crate::train::model::{Architecture, ModelFactory, builtin_architectures, builtin_models};

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

/// All named components a training run can be built from: one [`Catalog`] per kind.
#[derive(Debug, Clone)]
pub struct Registry {
    /// Tasks by `--task` name (`translation`, `language_modeling`).
    pub tasks: Catalog<TaskFactory>,
    /// Models by name (`transformer`): flags and builder.
    pub models: Catalog<ModelFactory>,
    /// Architectures by `--arch` name (`transformer_tiny`): a model name and a preset config.
    pub architectures: Catalog<Architecture>,
    /// Criteria by `--criterion` name.
    pub criterions: Catalog<CriterionFactory>,
    /// Optimizers by `--optimizer` name.
    pub optimizers: Catalog<OptimizerFactory>,
    /// Learning-rate schedulers by `--lr-scheduler` name.
    pub lr_schedulers: Catalog<LrSchedulerFactory>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// A registry with empty catalogs.
    pub fn new() -> Self {
        Self {
            tasks: Catalog::new("task"),
            models: Catalog::new("model"),
            architectures: Catalog::new("architecture"),
            criterions: Catalog::new("criterion"),
            optimizers: Catalog::new("optimizer"),
            lr_schedulers: Catalog::new("lr scheduler"),
        }
    }

    /// A registry holding seqforge's built-in components (see [`Registry::register_builtins`]).
    pub fn with_builtins() -> Result<Self, Error> {
        let mut registry = Self::new();
        registry.register_builtins()?;
        Ok(registry)
    }

    /// Registers seqforge's built-in tasks, models, architectures, criteria, optimizers and
    /// schedulers; an error if one of their names is already taken.
    pub fn register_builtins(&mut self) -> Result<(), Error> {
        for (name, factory) in builtin_tasks() {
            self.tasks.register(name, factory)?;
        }
        for (name, factory) in builtin_models() {
            self.models.register(name, factory)?;
        }
        for (name, arch) in builtin_architectures() {
            self.architectures.register(&name, arch)?;
        }
        for (name, factory) in builtin_criterions() {
            self.criterions.register(name, factory)?;
        }
        for (name, factory) in builtin_optimizers() {
            self.optimizers.register(name, factory)?;
        }
        for (name, factory) in builtin_lr_schedulers() {
            self.lr_schedulers.register(name, factory)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_registered_once() {
        let mut registry = Registry::with_builtins().unwrap_or_default();
        assert!(registry.criterions.get("cross_entropy").is_ok());
        assert!(registry.tasks.get("language_modeling").is_ok());
        assert!(registry.optimizers.get("adam").is_ok());
        assert!(registry.lr_schedulers.get("inverse_sqrt").is_ok());
        assert!(registry.models.get("transformer").is_ok());
        assert_eq!(
            registry.architectures.get("transformer_tiny").map(|a| a.model.as_str()),
            Ok("transformer")
        );
        assert!(matches!(registry.register_builtins(), Err(Error::Duplicate { .. })));
    }

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

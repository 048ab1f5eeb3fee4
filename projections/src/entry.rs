//! [`ViewKey`] and [`ViewValue`]: what a view's entries are made of.

use std::fmt::Debug;
use std::hash::Hash;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A key of a view. Blanket-implemented; persisted views store it as msgpack.
pub trait ViewKey:
    Eq + Hash + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
}
impl<T> ViewKey for T where
    T: Eq + Hash + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
}

/// A value of a view. Blanket-implemented; persisted views store it as msgpack with named
/// fields.
pub trait ViewValue: Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<T> ViewValue for T where T: Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{}

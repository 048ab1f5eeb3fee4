//! [`StockItemId`]: which store and which SKU a stock item is, and its aggregate id
//! `"{store}:{sku}"`.

use std::fmt;
use std::str::FromStr;

use keel_projections::ApplyError;
use serde::{Deserialize, Serialize};

/// The identity of one [`StockItem`](crate::StockItem): a SKU in a store.
///
/// Its string form `"{store}:{sku}"` is the aggregate id, so both parts are validated: not
/// empty, no `':'` (the separator) and no whitespace or control characters.
///
/// ```
/// use inventory::StockItemId;
///
/// let id: StockItemId = "berlin-01:sku-0042".parse().unwrap();
/// assert_eq!(id.store(), "berlin-01");
/// assert_eq!(id.sku(), "sku-0042");
/// assert_eq!(id.to_string(), "berlin-01:sku-0042");
/// assert!("berlin-01:".parse::<StockItemId>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StockItemId {
    store: String,
    sku: String,
}

/// Why a store, SKU or stock item id is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidId {
    /// A part of the id is empty.
    #[error("the {part} must not be empty")]
    Empty {
        /// `"store"` or `"sku"`.
        part: &'static str,
    },
    /// A part contains a character ids cannot hold.
    #[error("the {part} {value:?} contains {found:?}; use letters, digits, '-', '_' or '.'")]
    BadCharacter {
        /// `"store"` or `"sku"`.
        part: &'static str,
        /// The rejected value.
        value: String,
        /// The first offending character.
        found: char,
    },
    /// The string is not of the form `"{store}:{sku}"`.
    #[error("{0:?} is not a stock item id; expected \"STORE:SKU\"")]
    Malformed(String),
}

impl StockItemId {
    /// The id of SKU `sku` in store `store`, if both are valid.
    pub fn new(store: impl Into<String>, sku: impl Into<String>) -> Result<Self, InvalidId> {
        let (store, sku) = (store.into(), sku.into());
        validate("store", &store)?;
        validate("sku", &sku)?;
        Ok(StockItemId { store, sku })
    }

    /// The store.
    pub fn store(&self) -> &str {
        &self.store
    }

    /// The SKU.
    pub fn sku(&self) -> &str {
        &self.sku
    }
}

fn validate(part: &'static str, value: &str) -> Result<(), InvalidId> {
    if value.is_empty() {
        return Err(InvalidId::Empty { part });
    }
    if let Some(found) = value
        .chars()
        .find(|c| *c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(InvalidId::BadCharacter {
            part,
            value: value.to_string(),
            found,
        });
    }
    Ok(())
}

impl fmt::Display for StockItemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.store, self.sku)
    }
}

impl FromStr for StockItemId {
    type Err = InvalidId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (store, sku) = s
            .split_once(':')
            .ok_or_else(|| InvalidId::Malformed(s.to_string()))?;
        StockItemId::new(store, sku)
    }
}

/// The [`StockItemId`] of a stock item's events in the log; an id that does not parse cannot
/// be applied to a view.
pub(crate) fn logged_item_id(id: &str) -> Result<StockItemId, ApplyError> {
    id.parse().map_err(|e| {
        ApplyError::Invalid(format!("stock item id {id:?} in the log is invalid: {e}"))
    })
}

impl TryFrom<String> for StockItemId {
    type Error = InvalidId;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<StockItemId> for String {
    fn from(id: StockItemId) -> String {
        id.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_store_and_sku() {
        let id: StockItemId = "s1:sku-9".parse().expect("valid id");
        assert_eq!((id.store(), id.sku()), ("s1", "sku-9"));
        assert_eq!(id.to_string(), "s1:sku-9");
        assert_eq!(StockItemId::new("s1", "sku-9"), Ok(id));
    }

    #[test]
    fn rejects_empty_parts() {
        assert_eq!(
            ":sku".parse::<StockItemId>(),
            Err(InvalidId::Empty { part: "store" })
        );
        assert_eq!(
            "store:".parse::<StockItemId>(),
            Err(InvalidId::Empty { part: "sku" })
        );
        assert_eq!(
            StockItemId::new("", "x"),
            Err(InvalidId::Empty { part: "store" })
        );
    }

    #[test]
    fn rejects_separator_inside_a_part() {
        assert!(matches!(
            "a:b:c".parse::<StockItemId>(),
            Err(InvalidId::BadCharacter {
                part: "sku",
                found: ':',
                ..
            })
        ));
        assert!(matches!(
            StockItemId::new("a:b", "c"),
            Err(InvalidId::BadCharacter {
                part: "store",
                found: ':',
                ..
            })
        ));
    }

    #[test]
    fn rejects_whitespace_and_missing_separator() {
        assert!(matches!(
            StockItemId::new("main street", "c"),
            Err(InvalidId::BadCharacter { found: ' ', .. })
        ));
        assert_eq!(
            "nosku".parse::<StockItemId>(),
            Err(InvalidId::Malformed("nosku".into()))
        );
    }

    #[test]
    fn serializes_as_its_string_form() {
        let id = StockItemId::new("s1", "k1").expect("valid id");
        let json = serde_json::to_string(&id).expect("serializes");
        assert_eq!(json, "\"s1:k1\"");
        let back: StockItemId = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, id);
        assert!(serde_json::from_str::<StockItemId>("\"s1:\"").is_err());
    }
}

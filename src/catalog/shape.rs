//! `TviewShape`: what a TVIEW's refresh statements need to know about it, loaded from the
//! catalogs by `catalog::load_shape`; the statements themselves are built by `refresh::sql`.

/// What the refresh statements need to know about a TVIEW; identifiers are already quoted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TviewShape {
    pub table: String,
    pub view: String,
    pub key: String,
    /// The root table's column the TVIEW keys are selected from (`pk_post` of a read model
    /// keyed `pk_post AS pk_post_card`); usually the same name as `key`.
    pub root_key: String,
    /// Every column of the table except the key, in table order.
    pub values: Vec<String>,
    /// The root table (it has the key column), when it still exists.
    pub root: Option<String>,
}

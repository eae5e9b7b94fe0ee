//! Hand-written JSON Schemas for members whose Rust type says less than the wire does.

use schemars::{json_schema, Schema, SchemaGenerator};

/// A JSON object whose members this protocol does not fix (WebAuthn options and credentials,
/// passed through to and from the browser unchanged).
pub(crate) fn json_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "object" })
}

/// As [`json_object`], or `null`.
pub(crate) fn json_object_or_null(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": ["object", "null"] })
}

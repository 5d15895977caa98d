//! Strict reading of JSON request bodies, with the error codes the real server uses:
//! malformed JSON or a wrong type → 40058 ("Warning: wrong json format."), missing or empty
//! required field → 40063, `\uxxxx` escapes → 40033.

use serde_json::{Map, Value};

use crate::errors::{self, ApiError, ApiResult};

/// Parses a request body into a JSON object. An empty body counts as `{}` only when `allow_empty`.
pub fn parse_object(body: &[u8], allow_empty: bool) -> ApiResult<Map<String, Value>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        if allow_empty {
            return Ok(Map::new());
        }
        return Err(ApiError::wrong_json("empty body"));
    }
    if has_unicode_escape(body) {
        return Err(ApiError::new(
            errors::INVALID_CHARACTERS,
            "invalid charset. please check your request, if include \\uxxxx will create fail!",
        ));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::wrong_json("the body is not a JSON object")),
        Err(e) => Err(ApiError::wrong_json(format!(
            "line {} column {}",
            e.line(),
            e.column()
        ))),
    }
}

/// Whether a `\u` escape occurs (backslashes escaping backslashes are skipped).
fn has_unicode_escape(body: &[u8]) -> bool {
    let mut i = 0;
    while i < body.len() {
        if body[i] == b'\\' {
            if body.get(i + 1) == Some(&b'u') {
                return true;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    false
}

/// A view of one JSON object that names fields by their path in errors (`text.content`).
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    map: &'a Map<String, Value>,
    prefix: &'a str,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

impl<'a> Fields<'a> {
    /// A view of the top-level object.
    pub fn new(map: &'a Map<String, Value>) -> Fields<'a> {
        Fields { map, prefix: "" }
    }

    fn name(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    fn wrong_type(&self, key: &str, want: &str, got: &Value) -> ApiError {
        ApiError::wrong_json(format!(
            "field {} should be {want}, not {}",
            self.name(key),
            type_name(got)
        ))
    }

    /// The raw value, `null` counting as absent.
    pub fn raw(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// Whether the key is present (and not null).
    pub fn has(&self, key: &str) -> bool {
        self.raw(key).is_some()
    }

    /// An optional string.
    pub fn str_opt(&self, key: &str) -> ApiResult<Option<&'a str>> {
        match self.raw(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.wrong_type(key, "a string", v)),
        }
    }

    /// A required, non-empty string.
    pub fn str_req(&self, key: &str) -> ApiResult<&'a str> {
        match self.str_opt(key)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(ApiError::missing(&self.name(key))),
        }
    }

    /// A string no longer than `max` bytes (40035 otherwise).
    pub fn str_max(&self, key: &str, max: usize, required: bool) -> ApiResult<Option<&'a str>> {
        let value = if required {
            Some(self.str_req(key)?)
        } else {
            self.str_opt(key)?
        };
        if let Some(s) = value {
            if s.len() > max {
                return Err(ApiError::invalid(
                    &self.name(key),
                    &format!("longer than {max} bytes"),
                ));
            }
        }
        Ok(value)
    }

    /// An optional unsigned integer.
    pub fn u64_opt(&self, key: &str) -> ApiResult<Option<u64>> {
        match self.raw(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, "an unsigned integer", v)),
        }
    }

    /// A required unsigned integer.
    pub fn u64_req(&self, key: &str) -> ApiResult<u64> {
        self.u64_opt(key)?
            .ok_or_else(|| ApiError::missing(&self.name(key)))
    }

    /// A required number.
    pub fn f64_req(&self, key: &str) -> ApiResult<f64> {
        match self.raw(key) {
            None => Err(ApiError::missing(&self.name(key))),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.wrong_type(key, "a number", v)),
        }
    }

    /// An optional object, as a nested view.
    pub fn obj_opt(&self, key: &'a str) -> ApiResult<Option<Fields<'a>>> {
        match self.raw(key) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Fields { map, prefix: key })),
            Some(v) => Err(self.wrong_type(key, "an object", v)),
        }
    }

    /// A required object.
    pub fn obj_req(&self, key: &'a str) -> ApiResult<Fields<'a>> {
        self.obj_opt(key)?
            .ok_or_else(|| ApiError::missing(&self.name(key)))
    }

    /// An optional array.
    pub fn array_opt(&self, key: &str) -> ApiResult<Option<&'a Vec<Value>>> {
        match self.raw(key) {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(v) => Err(self.wrong_type(key, "an array", v)),
        }
    }

    /// An optional array of strings.
    pub fn strings_opt(&self, key: &str) -> ApiResult<Vec<&'a str>> {
        let Some(items) = self.array_opt(key)? else {
            return Ok(Vec::new());
        };
        items
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| self.wrong_type(key, "an array of strings", v))
            })
            .collect()
    }

    /// An optional array of unsigned integers.
    pub fn u64s_opt(&self, key: &str) -> ApiResult<Vec<u64>> {
        let Some(items) = self.array_opt(key)? else {
            return Ok(Vec::new());
        };
        items
            .iter()
            .map(|v| {
                v.as_u64()
                    .ok_or_else(|| self.wrong_type(key, "an array of unsigned integers", v))
            })
            .collect()
    }
}

/// Checks `[0-9a-zA-Z_-]*`.
pub fn is_id_charset(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_json_is_40058_with_the_warning_text() {
        let err = parse_object(b"{\"a\":", false).unwrap_err();
        assert_eq!(err.code, 40058);
        assert!(err.wire_message().contains("Warning: wrong json format."));
        assert_eq!(parse_object(b"[1]", false).unwrap_err().code, 40058);
        assert_eq!(parse_object(b"", false).unwrap_err().code, 40058);
        assert!(parse_object(b"", true).unwrap().is_empty());
    }

    #[test]
    fn unicode_escapes_are_40033_but_escaped_backslashes_are_fine() {
        assert_eq!(
            parse_object(br#"{"a":"\u4f60"}"#, false).unwrap_err().code,
            40033
        );
        assert!(parse_object(br#"{"a":"\\u4f60"}"#, false).is_ok());
    }

    #[test]
    fn wrong_types_are_40058_and_missing_fields_40063() {
        let map = parse_object(br#"{"s":1,"n":"x","e":""}"#, false).unwrap();
        let f = Fields::new(&map);
        assert_eq!(f.str_req("s").unwrap_err().code, 40058);
        assert_eq!(f.u64_opt("n").unwrap_err().code, 40058);
        assert_eq!(f.str_req("e").unwrap_err().code, 40063);
        assert_eq!(f.str_req("absent").unwrap_err().code, 40063);
    }
}

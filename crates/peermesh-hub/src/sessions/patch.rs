//! JSON merge patch (RFC 7386), applied in place.
//!
//! A patch that is a JSON object merges key by key: a `null` member removes the key, any other
//! member is merged recursively into the target's value for that key (a missing key starts as
//! `{}` when the member is an object). A patch that is not an object replaces the target whole.
//! Every JSON value is a valid merge patch, so applying one cannot fail.

use serde_json::{Map, Value};

/// Applies the merge patch `patch` to `target`, as RFC 7386 §2 describes.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(members) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(fields) = target {
        merge_members(fields, members);
    }
}

/// Merges the members of an object patch into the fields of an object target.
fn merge_members(fields: &mut Map<String, Value>, members: &Map<String, Value>) {
    for (key, member) in members {
        if member.is_null() {
            fields.remove(key);
        } else {
            let slot = fields.entry(key.clone()).or_insert(Value::Null);
            merge_patch(slot, member);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn patched(target: Value, patch: Value) -> Value {
        let mut t = target;
        merge_patch(&mut t, &patch);
        t
    }

    /// The test cases of RFC 7386, appendix A, in order.
    #[test]
    fn rfc7386_appendix_a_examples() {
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (
                json!({"a":"b","b":"c"}),
                json!({"a":null}),
                json!({"b":"c"}),
            ),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"a":"foo"}), json!(null), json!(null)),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (
                json!({}),
                json!({"a":{"bb":{"ccc":null}}}),
                json!({"a":{"bb":{}}}),
            ),
        ];
        for (i, (target, patch, want)) in cases.into_iter().enumerate() {
            assert_eq!(patched(target, patch), want, "case {i}");
        }
    }

    /// The worked example of RFC 7386 §3.
    #[test]
    fn rfc7386_section3_example() {
        let target = json!({
            "title": "Goodbye!",
            "author": {"givenName": "John", "familyName": "Doe"},
            "tags": ["example", "sample"],
            "content": "This will be unchanged"
        });
        let patch = json!({
            "title": "Hello!",
            "phoneNumber": "+01-123-456-7890",
            "author": {"familyName": null},
            "tags": ["example"]
        });
        let want = json!({
            "title": "Hello!",
            "author": {"givenName": "John"},
            "tags": ["example"],
            "content": "This will be unchanged",
            "phoneNumber": "+01-123-456-7890"
        });
        assert_eq!(patched(target, patch), want);
    }

    #[test]
    fn null_member_deletes_and_missing_key_null_is_a_no_op() {
        assert_eq!(patched(json!({"a":1}), json!({"b":null})), json!({"a":1}));
        assert_eq!(
            patched(json!({"a":1,"b":2}), json!({"b":null})),
            json!({"a":1})
        );
    }

    #[test]
    fn non_object_patch_replaces_the_target() {
        assert_eq!(patched(json!({"a":1}), json!(7)), json!(7));
        assert_eq!(patched(json!("x"), json!([1])), json!([1]));
        assert_eq!(
            patched(json!({"a":{"b":1}}), json!({"a":true})),
            json!({"a":true})
        );
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (0i64..100).prop_map(Value::from),
            "[a-c]{0,2}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
                prop::collection::btree_map("[a-d]", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn has_null_member(v: &Value) -> bool {
        match v {
            Value::Object(m) => m.values().any(|v| v.is_null() || has_null_member(v)),
            _ => false,
        }
    }

    proptest! {
        /// Applying the same patch twice gives the same result as applying it once.
        #[test]
        fn merge_patch_is_idempotent(target in arb_json(), patch in arb_json()) {
            let once = patched(target, patch.clone());
            let twice = patched(once.clone(), patch);
            prop_assert_eq!(once, twice);
        }

        /// A patch without null members, applied to `{}`, reproduces itself (for objects).
        #[test]
        fn patch_onto_empty_object_is_the_patch(patch in arb_json()) {
            prop_assume!(patch.is_object() && !has_null_member(&patch));
            prop_assert_eq!(patched(json!({}), patch.clone()), patch);
        }
    }
}

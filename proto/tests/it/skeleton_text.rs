//! Skeleton trees survive their text form and CBOR, for random trees; text
//! that is not a tree is refused, never panics.

use proptest::prelude::*;
use skelpi_proto::skeleton::{Kernel, Skeleton};

fn kernel() -> impl Strategy<Value = Kernel> {
    let name = prop_oneof![
        Just("square".to_owned()),
        Just("erf_burn".to_owned()),
        "[a-z_][a-z0-9_:.]{0,12}",
    ];
    // Arguments whose shortest `Display` reads back exactly (all finite f64s
    // do; NaN and infinities are not kernel arguments).
    let arg = prop_oneof![(-1e6f64..1e6), (0u32..1000).prop_map(f64::from)];
    (name, prop::collection::vec(arg, 0..3)).prop_map(|(name, args)| Kernel { name, args })
}

fn tree() -> impl Strategy<Value = Skeleton> {
    let leaf = prop_oneof![
        kernel().prop_map(Skeleton::Seq),
        kernel().prop_map(Skeleton::Reduce)
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..4).prop_map(Skeleton::Pipe),
            (inner.clone(), prop::option::of(1u32..64), any::<bool>()).prop_map(
                |(w, replicas, ordered)| Skeleton::Farm {
                    worker: Box::new(w),
                    replicas,
                    ordered,
                }
            ),
            (1u32..64, inner.clone()).prop_map(|(parts, w)| Skeleton::map(parts, w)),
            (inner, kernel(), 1u32..2000).prop_map(|(body, until, max_rounds)| {
                Skeleton::Feedback {
                    body: Box::new(body),
                    until,
                    max_rounds,
                }
            }),
        ]
    })
}

proptest! {
    #[test]
    fn text_form_round_trips(t in tree()) {
        let text = t.to_string();
        let back: Skeleton = text.parse().map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert_eq!(back, t);
    }

    #[test]
    fn cbor_round_trips(t in tree()) {
        let mut bytes = Vec::new();
        ciborium::into_writer(&t, &mut bytes).unwrap();
        let back: Skeleton = ciborium::from_reader(bytes.as_slice()).unwrap();
        prop_assert_eq!(back, t);
    }

    #[test]
    fn any_text_parses_or_is_refused(text in "[a-z(), 0-9.]{0,40}") {
        let _ = text.parse::<Skeleton>();
    }
}

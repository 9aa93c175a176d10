//! Compact stored types: float fields stored as scaled integers, and integers (those
//! scaled ones included) stored in 32 bits where a file's values fit.
//!
//! Sensors report decimals at their resolution (21.37 °C, 45.2 %RH, 412 ppb), and a
//! column of such values is a column of integers in disguise. Parquet has no delta
//! encoding for doubles: dictionary + zstd, the best of its float encodings on sensor
//! data, still spends about a byte per temperature reading. Stored as a Parquet
//! `DECIMAL(18, s)` on `INT64` with `DELTA_BINARY_PACKED`, consecutive readings of one
//! series (rows are sorted by series then time) differ by a few units of the last place
//! and pack into a few bits: 0.48 against 1.11 bytes per temperature reading on the
//! benchmark's data (benches/README).
//!
//! The encoding is lossless or not used. A segment column is stored as a decimal only if
//! *every* value comes back bit for bit through the cast every reader of the file applies
//! (`m as f64 / 10^s`, arrow's `Decimal64 -> Float64` cast, which DataFusion's scan uses
//! to present the table's `Float64` type); NaN, infinities, `-0.0`, magnitudes of
//! 10^9 and more, and values needing more than [`MAX_SCALE`] places keep the column a
//! plain double. Parquet's `DECIMAL` is a standard logical type, so readers we did not
//! write (pyarrow, DuckDB) read the same numbers, as decimals.
//!
//! Why the bounds: with at most 6 places and |v| < 10^9 the scaled integer stays below
//! 10^15 < 2^53, so it converts to a double exactly and `m / 10^s` is the correctly
//! rounded quotient of the very rational the value was rounded from. Rescaling to more
//! places (merging files of different scales) multiplies `m` by a power of ten and
//! divides by the same power: the same rational, the same double. So a merge never has
//! to fall back, and [`to_decimal`] checks every value anyway.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Decimal32Array, Decimal64Array, Float64Array};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef, UInt64Type};
use arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};

/// Most decimal places of a float column stored as a scaled integer.
pub const MAX_SCALE: i8 = 6;

/// Values of this magnitude or more keep their column a double (see the module docs).
const MAX_MAGNITUDE: f64 = 1e9;

/// Decimal precision of the stored type: 18 digits is the widest that Parquet stores
/// on `INT64` (the values themselves stay below 10^15).
const PRECISION: u8 = 18;

/// Decimal precision of the narrow stored type, the widest that Parquet stores on `INT32`.
const PRECISION_32: u8 = 9;

/// Largest scaled integer a `Decimal32(9, s)` column holds.
const MAX_DECIMAL_32: u64 = 999_999_999;

/// Which compact stored types a segment may use ([`crate::segment::SegmentOptions`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packing {
    /// Float columns of short decimals as scaled integers.
    pub decimals: bool,
    /// Integer columns (and scaled integers) in 32 bits where the values fit.
    pub narrow: bool,
}

impl Packing {
    /// Whether the stored schema can differ from the table's at all.
    pub fn any(self) -> bool {
        self.decimals || self.narrow
    }
}

/// `10^s` as a double, computed as arrow's cast computes it.
fn pow10(s: i8) -> f64 {
    10f64.powi(i32::from(s))
}

/// Whether `v` is small enough to store as a decimal (false for NaN and infinities).
fn in_range(v: f64) -> bool {
    v.abs() < MAX_MAGNITUDE
}

/// The scaled integer of `v` at scale `s`, if `v` comes back from it bit for bit.
fn scaled(v: f64, s: i8) -> Option<i64> {
    if !in_range(v) {
        return None;
    }
    let p = pow10(s);
    let m = (v * p).round() as i64;
    // the exact expression of arrow's cast (`single_decimal_to_float_lossy`)
    ((m as i128 as f64) / p)
        .to_bits()
        .eq(&v.to_bits())
        .then_some(m)
}

/// The fewest decimal places (at most [`MAX_SCALE`]) at which every non-null value of
/// `a` is stored exactly, or `None` if there are none.
pub fn decimal_places(a: &Float64Array) -> Option<i8> {
    places_and_largest(a).map(|(s, _)| s)
}

/// [`decimal_places`] and the largest magnitude of a scaled integer at those places.
fn places_and_largest(a: &Float64Array) -> Option<(i8, u64)> {
    let mut s = 0;
    let mut largest = 0f64;
    for v in a.iter().flatten() {
        // a value exact at `s` places is exact at more (module docs): the scale only
        // ever grows, so one pass finds the least that fits all
        while scaled(v, s).is_none() {
            if s == MAX_SCALE || !in_range(v) {
                return None;
            }
            s += 1;
        }
        largest = largest.max(v.abs());
    }
    // rounding is symmetric and monotonic: the largest value scales to the largest integer
    Some((s, scaled(largest, s)?.unsigned_abs()))
}

/// The stored type of a float column: a decimal (32 bits if `narrow` and the values
/// fit) if every value is a short decimal, else `None` (a double).
fn float_storage(a: &Float64Array, narrow: bool) -> Option<DataType> {
    let (s, largest) = places_and_largest(a)?;
    Some(if narrow && largest <= MAX_DECIMAL_32 {
        decimal32_type(s)
    } else {
        decimal_type(s)
    })
}

/// The 32-bit stored type of an integer column whose values all fit, else `None`.
fn integer_storage(c: &ArrayRef) -> Option<DataType> {
    use arrow::compute::{max, min};
    match c.data_type() {
        DataType::Int64 => {
            let a = c.as_primitive::<Int64Type>();
            let fits = min(a).is_none_or(|v| v >= i64::from(i32::MIN))
                && max(a).is_none_or(|v| v <= i64::from(i32::MAX));
            fits.then_some(DataType::Int32)
        }
        DataType::UInt64 => {
            let fits = max(c.as_primitive::<UInt64Type>()).is_none_or(|v| v <= u64::from(u32::MAX));
            fits.then_some(DataType::UInt32)
        }
        _ => None,
    }
}

/// `a` as `Decimal64(18, scale)`; an error if some value is not exact at `scale`.
pub fn to_decimal(a: &Float64Array, scale: i8) -> Result<ArrayRef> {
    let values = scaled_values(a, scale)?;
    let out = Decimal64Array::new(values.into(), a.nulls().cloned())
        .with_precision_and_scale(PRECISION, scale)?;
    Ok(Arc::new(out))
}

/// `a` as `Decimal32(9, scale)`; an error if some value is not exact at `scale` or its
/// scaled integer has more than 9 digits.
pub fn to_decimal32(a: &Float64Array, scale: i8) -> Result<ArrayRef> {
    let values = scaled_values(a, scale)?
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            if m.unsigned_abs() <= MAX_DECIMAL_32 {
                Ok(m as i32)
            } else {
                Err(Error::Internal(format!(
                    "float {:?} needs more than {PRECISION_32} digits at {scale} decimal places",
                    a.value(i)
                )))
            }
        })
        .collect::<Result<Vec<i32>>>()?;
    let out = Decimal32Array::new(values.into(), a.nulls().cloned())
        .with_precision_and_scale(PRECISION_32, scale)?;
    Ok(Arc::new(out))
}

/// The scaled integers of `a` at `scale` (0 for nulls); an error if one is not exact.
fn scaled_values(a: &Float64Array, scale: i8) -> Result<Vec<i64>> {
    let mut values = Vec::with_capacity(a.len());
    for i in 0..a.len() {
        if a.is_null(i) {
            values.push(0i64);
            continue;
        }
        let v = a.value(i);
        let m = scaled(v, scale).ok_or_else(|| {
            Error::Internal(format!(
                "float {v:?} is not exact at {scale} decimal places"
            ))
        })?;
        values.push(m);
    }
    Ok(values)
}

/// The stored type of a float column at `scale` places. `Decimal64` rather than
/// `Decimal128`: Parquet's reader hands `INT64` decimals over as `Decimal64` without a
/// copy, where a `Decimal128` column is widened value by value (server CPU of the
/// all-buildings hourly average over 8.64 M rows: 214–229 ms as `Decimal128`, 191–197
/// as `Decimal64`, 195–206 as doubles; benches/README).
pub fn decimal_type(scale: i8) -> DataType {
    DataType::Decimal64(PRECISION, scale)
}

/// The narrow stored type of a float column at `scale` places (module docs).
pub fn decimal32_type(scale: i8) -> DataType {
    DataType::Decimal32(PRECISION_32, scale)
}

/// `schema` with the columns that `stored_as` gives a type stored as that type.
fn with_types(
    schema: &SchemaRef,
    mut stored_as: impl FnMut(&Field) -> Option<DataType>,
) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match stored_as(f) {
            Some(t) => f.as_ref().clone().with_data_type(t),
            None => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// The stored schema of a segment holding `batch`: each float column whose values all
/// fit (see [`decimal_places`]) as a decimal, each integer column whose values fit in
/// 32 bits narrow (as `packing` allows), the rest as in `batch`.
pub fn storage_schema_of(batch: &RecordBatch, packing: Packing) -> SchemaRef {
    let schema = batch.schema();
    with_types(&schema, |f| {
        let c = batch.column_by_name(f.name())?;
        match c.data_type() {
            DataType::Float64 if packing.decimals => {
                float_storage(c.as_primitive::<Float64Type>(), packing.narrow)
            }
            DataType::Int64 | DataType::UInt64 if packing.narrow => integer_storage(c),
            _ => None,
        }
    })
}

/// The stored schema of a segment merged from segments stored as `inputs`, in the
/// table's `schema` (as `packing` allows): a float column is a decimal if every input
/// holding it stores it as one, at the largest of their scales (exact, see the module
/// docs), and a `Decimal32` only if all of them are at that one scale; an integer column
/// is narrow if every input holding it stores it narrow.
pub fn merged_storage_schema(
    schema: &SchemaRef,
    inputs: &[SchemaRef],
    packing: Packing,
) -> SchemaRef {
    with_types(schema, |f| {
        let stored = inputs
            .iter()
            .filter_map(|s| s.field_with_name(f.name()).ok().map(|g| g.data_type()));
        match f.data_type() {
            DataType::Float64 if packing.decimals => {
                let mut all_narrow = true;
                let mut scales = std::collections::BTreeSet::new();
                for t in stored {
                    match t {
                        DataType::Decimal32(_, sc) => scales.insert(*sc),
                        // (Decimal128: what the first version of this encoding wrote)
                        DataType::Decimal64(_, sc) | DataType::Decimal128(_, sc) => {
                            all_narrow = false;
                            scales.insert(*sc)
                        }
                        _ => return None,
                    };
                }
                let s = scales
                    .last()
                    .copied()
                    .filter(|s| (0..=MAX_SCALE).contains(s))?;
                Some(if packing.narrow && all_narrow && scales.len() == 1 {
                    decimal32_type(s)
                } else {
                    decimal_type(s)
                })
            }
            DataType::Int64 | DataType::UInt64 if packing.narrow => {
                let narrow = if *f.data_type() == DataType::Int64 {
                    DataType::Int32
                } else {
                    DataType::UInt32
                };
                let mut any = false;
                for t in stored {
                    if *t != narrow {
                        return None;
                    }
                    any = true;
                }
                any.then_some(narrow)
            }
            _ => None,
        }
    })
}

/// `batch` in the stored schema `storage`: float columns that it stores as decimals
/// converted (exactly, or an error), integer columns it stores narrow narrowed (or an
/// error), every other column as it is.
pub fn encode(batch: &RecordBatch, storage: &SchemaRef) -> Result<RecordBatch> {
    if batch.schema().as_ref() == storage.as_ref() {
        return Ok(batch.clone());
    }
    let columns = storage
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, c)| match (f.data_type(), c.data_type()) {
            (DataType::Decimal64(_, s), DataType::Float64) => {
                to_decimal(c.as_primitive::<Float64Type>(), *s)
            }
            (DataType::Decimal32(_, s), DataType::Float64) => {
                to_decimal32(c.as_primitive::<Float64Type>(), *s)
            }
            (DataType::Int32, DataType::Int64) | (DataType::UInt32, DataType::UInt64) => {
                // `safe: false`: a value out of range is an error, never a null
                let strict = CastOptions {
                    safe: false,
                    ..Default::default()
                };
                cast_with_options(c, f.data_type(), &strict).map_err(|e| {
                    Error::Internal(format!(
                        "column {} does not fit {}: {e}",
                        f.name(),
                        f.data_type()
                    ))
                })
            }
            _ => Ok(Arc::clone(c)),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(Arc::clone(storage), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What every reader does with a stored decimal column: arrow's cast.
    fn read_back(a: &ArrayRef) -> Float64Array {
        arrow::compute::cast(a, &DataType::Float64)
            .unwrap()
            .as_primitive::<Float64Type>()
            .clone()
    }

    fn same_bits(a: &Float64Array, b: &Float64Array) -> bool {
        a.len() == b.len()
            && a.nulls() == b.nulls()
            && (0..a.len()).all(|i| a.is_null(i) || a.value(i).to_bits() == b.value(i).to_bits())
    }

    #[test]
    fn sensor_decimals_take_their_places() {
        let a = Float64Array::from(vec![21.37, 21.4, 22.0]);
        assert_eq!(decimal_places(&a), Some(2));
        let a = Float64Array::from(vec![Some(412.0), None, Some(-3.0)]);
        assert_eq!(decimal_places(&a), Some(0));
        assert_eq!(
            decimal_places(&Float64Array::from(vec![0.1, 0.25])),
            Some(2)
        );
        assert_eq!(decimal_places(&Float64Array::from(vec![1e-6])), Some(6));
        assert_eq!(
            decimal_places(&Float64Array::from(Vec::<f64>::new())),
            Some(0)
        );
    }

    #[test]
    fn values_a_decimal_cannot_hold_keep_the_column_a_double() {
        for bad in [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -0.0,
            0.1 + 0.2, // 0.30000000000000004
            1e-7,
            5e-324,
            1e9,
            -1e300,
            std::f64::consts::PI,
        ] {
            let a = Float64Array::from(vec![1.5, bad]);
            assert_eq!(decimal_places(&a), None, "{bad:?}");
            assert!(to_decimal(&a, MAX_SCALE).is_err(), "{bad:?}");
        }
        // one inexact value is enough, wherever it is
        assert!(to_decimal(&Float64Array::from(vec![21.37]), 1).is_err());
    }

    proptest! {
        /// Whatever `decimal_places` accepts comes back bit for bit through arrow's
        /// cast, at its own scale and at every larger one (a merge with finer files).
        #[test]
        fn stored_decimals_read_back_exactly(
            ms in proptest::collection::vec(-999_999_999_999_999i64..=999_999_999_999_999, 1..50),
            s in 0i8..=MAX_SCALE,
            nulls in proptest::collection::vec(any::<bool>(), 50),
        ) {
            // decimals as a sensor reports them: the nearest double to m / 10^s, as
            // parsing the text would give), below 10^9
            let bound = 10i64.pow(9 + s as u32);
            let a: Float64Array = ms
                .iter()
                .zip(&nulls)
                .map(|(m, n)| (!n).then(|| format!("{}e-{s}", m % bound).parse::<f64>().unwrap()))
                .collect();
            let found = decimal_places(&a);
            prop_assert!(found.is_some_and(|f| f <= s), "{:?} for scale {}", found, s);
            let found = found.unwrap();
            for scale in found..=MAX_SCALE {
                let d = to_decimal(&a, scale).unwrap();
                prop_assert!(same_bits(&read_back(&d), &a), "scale {}", scale);
            }
        }

        /// Arbitrary doubles: either stored exactly or refused, never changed.
        #[test]
        fn arbitrary_doubles_are_exact_or_refused(bits in proptest::collection::vec(any::<u64>(), 1..20)) {
            let a = Float64Array::from(bits.iter().map(|b| f64::from_bits(*b)).collect::<Vec<_>>());
            if let Some(s) = decimal_places(&a) {
                prop_assert!(same_bits(&read_back(&to_decimal(&a, s).unwrap()), &a));
            }
        }
    }

    const FULL: Packing = Packing {
        decimals: true,
        narrow: true,
    };
    const WIDE: Packing = Packing {
        decimals: true,
        narrow: false,
    };

    fn one_column(c: ArrayRef) -> RecordBatch {
        let schema = Schema::new(vec![Field::new("c", c.data_type().clone(), true)]);
        RecordBatch::try_new(Arc::new(schema), vec![c]).unwrap()
    }

    fn stored_type(c: ArrayRef, packing: Packing) -> DataType {
        storage_schema_of(&one_column(c), packing)
            .field(0)
            .data_type()
            .clone()
    }

    #[test]
    fn columns_that_fit_are_stored_in_32_bits() {
        use arrow::array::{Int64Array, UInt64Array};
        let i = |v: Vec<Option<i64>>| Arc::new(Int64Array::from(v)) as ArrayRef;
        let lo = i64::from(i32::MIN);
        let hi = i64::from(i32::MAX);
        assert_eq!(
            stored_type(i(vec![Some(lo), None, Some(hi)]), FULL),
            DataType::Int32
        );
        assert_eq!(stored_type(i(vec![Some(lo - 1)]), FULL), DataType::Int64);
        assert_eq!(stored_type(i(vec![Some(hi + 1)]), FULL), DataType::Int64);
        assert_eq!(stored_type(i(vec![None, None]), FULL), DataType::Int32);
        assert_eq!(stored_type(i(vec![Some(1)]), WIDE), DataType::Int64);
        let u = |v: Vec<u64>| Arc::new(UInt64Array::from(v)) as ArrayRef;
        assert_eq!(
            stored_type(u(vec![0, u64::from(u32::MAX)]), FULL),
            DataType::UInt32
        );
        assert_eq!(
            stored_type(u(vec![u64::from(u32::MAX) + 1]), FULL),
            DataType::UInt64
        );
        let f = |v: Vec<f64>| Arc::new(Float64Array::from(v)) as ArrayRef;
        // 9 digits fit a Decimal32, 10 do not
        assert_eq!(
            stored_type(f(vec![21.37, -99_999.999_9]), FULL),
            decimal32_type(4)
        );
        assert_eq!(
            stored_type(f(vec![21.37, 100_000.000_1]), FULL),
            decimal_type(4)
        );
        assert_eq!(
            stored_type(f(vec![-999_999_999.0]), FULL),
            decimal32_type(0)
        );
        assert_eq!(stored_type(f(vec![21.37]), WIDE), decimal_type(2));
        // narrow integers without decimals: floats stay doubles
        let ints_only = Packing {
            decimals: false,
            narrow: true,
        };
        assert_eq!(stored_type(f(vec![21.37]), ints_only), DataType::Float64);
        assert_eq!(stored_type(i(vec![Some(7)]), ints_only), DataType::Int32);
    }

    #[test]
    fn encoding_refuses_values_the_narrow_type_cannot_hold() {
        use arrow::array::{Int64Array, UInt64Array};
        let narrow = |t: DataType| Arc::new(Schema::new(vec![Field::new("c", t, true)]));
        let b = one_column(Arc::new(Int64Array::from(vec![1, 1 << 40])));
        assert!(encode(&b, &narrow(DataType::Int32)).is_err());
        let b = one_column(Arc::new(UInt64Array::from(vec![1, 1 << 40])));
        assert!(encode(&b, &narrow(DataType::UInt32)).is_err());
        let b = one_column(Arc::new(Float64Array::from(vec![
            1_000_000_000.0 / 1e3 + 0.001,
        ])));
        assert!(encode(&b, &narrow(decimal32_type(3))).is_err());
        assert!(encode(&b, &narrow(decimal_type(3))).is_ok());
    }

    proptest! {
        /// Integers stored narrow where they fit come back as the same 64-bit values.
        #[test]
        fn integers_read_back_exactly(
            vs in proptest::collection::vec(prop_oneof![any::<i64>(), any::<i32>().prop_map(i64::from)], 1..40),
        ) {
            let c: ArrayRef = Arc::new(arrow::array::Int64Array::from(vs));
            let b = one_column(Arc::clone(&c));
            let storage = storage_schema_of(&b, FULL);
            let stored = encode(&b, &storage).unwrap();
            let back = arrow::compute::cast(stored.column(0), &DataType::Int64).unwrap();
            prop_assert_eq!(&back, &c);
        }

        /// Short decimals stored as `Decimal32` read back bit for bit, like `Decimal64`.
        #[test]
        fn narrow_decimals_read_back_exactly(
            ms in proptest::collection::vec(-999_999_999i64..=999_999_999, 1..40),
            s in 0i8..=MAX_SCALE,
        ) {
            let a: Float64Array = ms
                .iter()
                .map(|m| format!("{m}e-{s}").parse::<f64>().unwrap())
                .collect();
            let t = stored_type(Arc::new(a.clone()), FULL);
            prop_assert!(matches!(t, DataType::Decimal32(9, f) if f <= s), "{:?}", t);
            let stored = encode(&one_column(Arc::new(a.clone())), &Arc::new(Schema::new(vec![Field::new("c", t, true)]))).unwrap();
            prop_assert!(same_bits(&read_back(stored.column(0)), &a));
        }
    }

    #[test]
    fn merges_stay_narrow_only_where_every_input_is() {
        let table: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("t", DataType::Float64, true),
            Field::new("n", DataType::Int64, true),
            Field::new("u", DataType::UInt64, true),
        ]));
        let stored = |fields: Vec<(&str, DataType)>| -> SchemaRef {
            Arc::new(Schema::new(
                fields
                    .into_iter()
                    .map(|(n, t)| Field::new(n, t, true))
                    .collect::<Vec<_>>(),
            ))
        };
        let types = |m: SchemaRef| -> Vec<DataType> {
            m.fields().iter().map(|f| f.data_type().clone()).collect()
        };
        // all narrow at one scale (a column missing from an input does not count)
        let m = merged_storage_schema(
            &table,
            &[
                stored(vec![("t", decimal32_type(2)), ("n", DataType::Int32)]),
                stored(vec![("t", decimal32_type(2)), ("u", DataType::UInt32)]),
            ],
            FULL,
        );
        assert_eq!(
            types(m),
            [decimal32_type(2), DataType::Int32, DataType::UInt32]
        );
        // scales differ (rescaling may need a 10th digit) or one input is wide: 64 bits
        let m = merged_storage_schema(
            &table,
            &[
                stored(vec![("t", decimal32_type(1)), ("n", DataType::Int32)]),
                stored(vec![("t", decimal32_type(2)), ("n", DataType::Int64)]),
            ],
            FULL,
        );
        assert_eq!(
            types(m),
            [decimal_type(2), DataType::Int64, DataType::UInt64]
        );
        let m = merged_storage_schema(
            &table,
            &[
                stored(vec![("t", decimal32_type(2))]),
                stored(vec![("t", decimal_type(2))]),
            ],
            FULL,
        );
        assert_eq!(types(m)[0], decimal_type(2));
        // narrowing off: narrow inputs merge into 64-bit types
        let m = merged_storage_schema(
            &table,
            &[stored(vec![
                ("t", decimal32_type(2)),
                ("n", DataType::Int32),
            ])],
            WIDE,
        );
        assert_eq!(
            types(m),
            [decimal_type(2), DataType::Int64, DataType::UInt64]
        );
    }

    #[test]
    fn merged_scale_is_the_largest_and_a_double_input_wins() {
        let table: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("t", DataType::Float64, true),
            Field::new("h", DataType::Float64, true),
            Field::new("n", DataType::Int64, true),
        ]));
        let stored = |t: DataType, h: Option<DataType>| -> SchemaRef {
            let mut f = vec![Field::new("t", t, true)];
            if let Some(h) = h {
                f.push(Field::new("h", h, true));
            }
            Arc::new(Schema::new(f))
        };
        let m = merged_storage_schema(
            &table,
            &[
                stored(decimal_type(1), Some(decimal_type(0))),
                stored(decimal_type(2), None),
            ],
            WIDE,
        );
        assert_eq!(m.field(0).data_type(), &decimal_type(2));
        assert_eq!(m.field(1).data_type(), &decimal_type(0));
        assert_eq!(m.field(2).data_type(), &DataType::Int64);
        let m = merged_storage_schema(
            &table,
            &[
                stored(decimal_type(1), Some(DataType::Float64)),
                stored(DataType::Float64, None),
            ],
            FULL,
        );
        assert_eq!(m.field(0).data_type(), &DataType::Float64);
        assert_eq!(m.field(1).data_type(), &DataType::Float64);
    }
}

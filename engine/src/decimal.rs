//! Float fields stored as scaled integers.
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

use arrow::array::{Array, ArrayRef, AsArray, Decimal64Array, Float64Array};
use arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};

/// Most decimal places of a float column stored as a scaled integer.
pub const MAX_SCALE: i8 = 6;

/// Values of this magnitude or more keep their column a double (see the module docs).
const MAX_MAGNITUDE: f64 = 1e9;

/// Decimal precision of the stored type: 18 digits is the widest that Parquet stores
/// on `INT64` (the values themselves stay below 10^15).
const PRECISION: u8 = 18;

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
    let mut s = 0;
    for v in a.iter().flatten() {
        // a value exact at `s` places is exact at more (module docs): the scale only
        // ever grows, so one pass finds the least that fits all
        while scaled(v, s).is_none() {
            if s == MAX_SCALE || !in_range(v) {
                return None;
            }
            s += 1;
        }
    }
    Some(s)
}

/// `a` as `Decimal64(18, scale)`; an error if some value is not exact at `scale`.
pub fn to_decimal(a: &Float64Array, scale: i8) -> Result<ArrayRef> {
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
    let out = Decimal64Array::new(values.into(), a.nulls().cloned())
        .with_precision_and_scale(PRECISION, scale)?;
    Ok(Arc::new(out))
}

/// The stored type of a float column at `scale` places. `Decimal64` rather than
/// `Decimal128`: Parquet's reader hands `INT64` decimals over as `Decimal64` without a
/// copy, where a `Decimal128` column is widened value by value (server CPU of the
/// all-buildings hourly average over 8.64 M rows: 214–229 ms as `Decimal128`, 191–197
/// as `Decimal64`, 195–206 as doubles; benches/README).
pub fn decimal_type(scale: i8) -> DataType {
    DataType::Decimal64(PRECISION, scale)
}

/// `schema` with the `Float64` columns that `scale_of` gives a scale stored as decimals.
fn with_scales(schema: &SchemaRef, mut scale_of: impl FnMut(&Field) -> Option<i8>) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match (f.data_type(), scale_of(f)) {
            (DataType::Float64, Some(s)) => f.as_ref().clone().with_data_type(decimal_type(s)),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// The stored schema of a segment holding `batch`: each float column whose values all
/// fit (see [`decimal_places`]) as a decimal, the rest as in `batch`.
pub fn storage_schema_of(batch: &RecordBatch) -> SchemaRef {
    let schema = batch.schema();
    with_scales(&schema, |f| {
        let c = batch.column_by_name(f.name())?;
        decimal_places(c.as_primitive_opt::<Float64Type>()?)
    })
}

/// The stored schema of a segment merged from segments stored as `inputs`, in the
/// table's `schema`: a float column is a decimal if every input holding it stores it as
/// one, at the largest of their scales (exact, see the module docs).
pub fn merged_storage_schema(schema: &SchemaRef, inputs: &[SchemaRef]) -> SchemaRef {
    with_scales(schema, |f| {
        let mut scale: Option<i8> = None;
        for s in inputs {
            match s.field_with_name(f.name()).map(|g| g.data_type()) {
                // (Decimal128: what the first version of this encoding wrote)
                Ok(DataType::Decimal64(_, sc) | DataType::Decimal128(_, sc)) => {
                    scale = Some(scale.unwrap_or(0).max(*sc))
                }
                Ok(_) => return None,
                Err(_) => {} // not in that segment: nulls there
            }
        }
        scale.filter(|s| (0..=MAX_SCALE).contains(s))
    })
}

/// `batch` in the stored schema `storage`: float columns that it stores as decimals
/// converted (exactly, or an error), every other column as it is.
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
            // parsing the text would give
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
        );
        assert_eq!(m.field(0).data_type(), &DataType::Float64);
        assert_eq!(m.field(1).data_type(), &DataType::Float64);
    }
}

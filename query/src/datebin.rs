//! `date_bin` (and its alias `time_bucket`) with a fast path for the dashboard case.
//!
//! DataFusion's `date_bin` computes every row with checked arithmetic and a 64-bit
//! division (`%`), turning a failure into NULL row by row; in a query that buckets a day
//! of readings that was a quarter of the CPU once the aggregate itself got cheap
//! ([`crate::runs`]; `perf`, numbers in `benches/README.md`). This wrapper keeps
//! DataFusion's function — its signature, types, ordering properties, documentation and
//! every case it handles — and computes one case itself: a fixed stride (an interval
//! without months, positive), a nanosecond timestamp array and the default or a
//! nanosecond origin: each row is `origin + floor((t - origin) / stride) * stride`, with
//! the division by the stride strength-reduced to a multiplication (`strength_reduce`)
//! and skipped for the rows that fall into the bucket of the row before. Rows are checked
//! one by one against the range of times that cannot overflow; a batch with one outside it
//! goes to DataFusion's code, which makes those rows NULL. Same answers, row for row
//! (tested against it below).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, PrimitiveArray};
use datafusion::arrow::datatypes::{
    DataType, Field, IntervalMonthDayNano, IntervalMonthDayNanoType, TimeUnit,
    TimestampNanosecondType,
};
use datafusion::common::{Result, ScalarValue};
use datafusion::config::ConfigOptions;
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};
use strength_reduce::StrengthReducedU64;

const NANOS_PER_DAY: i64 = 86_400_000_000_000;

/// See the module docs.
#[derive(Debug, PartialEq, Eq, Hash)]
struct FastDateBin {
    inner: Arc<ScalarUDF>,
}

/// talo's `date_bin`, aliased `time_bucket`.
pub(crate) fn date_bin() -> Arc<ScalarUDF> {
    Arc::new(
        ScalarUDF::new_from_impl(FastDateBin {
            inner: datafusion::functions::datetime::date_bin(),
        })
        .with_aliases(["time_bucket"]),
    )
}

impl ScalarUDFImpl for FastDateBin {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }
    fn output_ordering(&self, input: &[ExprProperties]) -> Result<SortProperties> {
        self.inner.output_ordering(input)
    }
    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if let Some(out) = fast_path(&args.args)? {
            return Ok(out);
        }
        self.inner.invoke_with_args(args)
    }
}

/// The stride in nanoseconds, if it is a fixed positive interval.
pub(crate) fn fixed_stride(v: &ColumnarValue) -> Option<i64> {
    let nanos = match v {
        ColumnarValue::Scalar(ScalarValue::IntervalMonthDayNano(Some(i))) => {
            let (months, days, nanos) = IntervalMonthDayNanoType::to_parts(*i);
            if months != 0 {
                return None;
            }
            (days as i64)
                .checked_mul(NANOS_PER_DAY)?
                .checked_add(nanos)?
        }
        ColumnarValue::Scalar(ScalarValue::IntervalDayTime(Some(i))) => (i.days as i64)
            .checked_mul(NANOS_PER_DAY)?
            .checked_add((i.milliseconds as i64).checked_mul(1_000_000)?)?,
        _ => return None,
    };
    (nanos > 0).then_some(nanos)
}

/// The fast case, computed; `None`: not the fast case, or a row could overflow.
fn fast_path(args: &[ColumnarValue]) -> Result<Option<ColumnarValue>> {
    let Some(stride) = args.first().and_then(fixed_stride) else {
        return Ok(None);
    };
    let origin = match args.get(2) {
        None => 0,
        Some(ColumnarValue::Scalar(ScalarValue::TimestampNanosecond(Some(o), _))) => *o,
        Some(_) => return Ok(None),
    };
    let Some(ColumnarValue::Array(array)) = args.get(1) else {
        return Ok(None);
    };
    if !matches!(
        array.data_type(),
        DataType::Timestamp(TimeUnit::Nanosecond, _)
    ) {
        return Ok(None);
    }
    let times = array.as_primitive::<TimestampNanosecondType>();
    Ok(bin(times, stride, origin).map(ColumnarValue::Array))
}

/// `origin + floor((t - origin) / stride) * stride` for the times that cannot overflow.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Binner {
    stride: i64,
    origin: i64,
    /// The times whose bucket can be computed without overflow: `[lowest, highest]`.
    lowest: i64,
    highest: i64,
    by: StrengthReducedU64,
}

impl Binner {
    /// `stride` > 0 (nanoseconds), `origin` in nanoseconds.
    pub(crate) fn new(stride: i64, origin: i64) -> Binner {
        // (t - origin), (t - origin - stride) and (t - stride) all fit: the result lies in
        // (t - stride, t], so it fits too
        let (s, o, min) = (stride as i128, origin as i128, i64::MIN as i128);
        Binner {
            stride,
            origin,
            lowest: (min + o + s).max(min + s).max(min + o) as i64,
            highest: (i64::MAX as i128 + o).min(i64::MAX as i128) as i64,
            by: StrengthReducedU64::new(stride as u64),
        }
    }

    /// The bucket of `t` and the times `[lo, hi]` that share it, or `None` where `t`
    /// could overflow (DataFusion's function makes such a row NULL).
    #[inline]
    pub(crate) fn bucket(&self, t: i64) -> Option<(i64, i64, i64)> {
        if t < self.lowest || t > self.highest {
            return None;
        }
        let diff = t - self.origin;
        let delta = if diff >= 0 {
            (diff as u64 / self.by) as i64 * self.stride
        } else {
            // floor for negatives: -(|diff| - 1) / stride - 1 whole strides
            let n = (-(diff + 1)) as u64;
            -(((n / self.by) as i64 + 1) * self.stride)
        };
        let cur = self.origin + delta;
        let lo = cur.max(self.lowest);
        let hi = cur.saturating_add(self.stride - 1).min(self.highest);
        Some((cur, lo, hi))
    }
}

/// Every time of `times` binned, or `None` if some row could overflow.
///
/// One pass, no per-batch minimum and maximum: the rows that cannot overflow form one
/// range of times, `[lowest, highest]`, checked row by row, and each computed bucket
/// remembers the range of times that fall into it, so that the next row of the same
/// bucket (a series' readings arrive in time order, many to a bucket) costs two
/// comparisons instead of a division.
fn bin(
    times: &PrimitiveArray<TimestampNanosecondType>,
    stride: i64,
    origin: i64,
) -> Option<ArrayRef> {
    let binner = Binner::new(stride, origin);
    let nulls = times.nulls().filter(|n| n.null_count() > 0);
    let mut out = Vec::with_capacity(times.len());
    // the times [lo, hi] all fall into the bucket `cur` (empty at first)
    let (mut lo, mut hi, mut cur) = (1i64, 0i64, 0i64);
    for (i, &t) in times.values().iter().enumerate() {
        if lo <= t && t <= hi {
            out.push(cur);
            continue;
        }
        if nulls.is_some_and(|n| n.is_null(i)) {
            // a NULL slot holds an arbitrary value: masked below
            out.push(0);
            continue;
        }
        (cur, lo, hi) = binner.bucket(t)?;
        out.push(cur);
    }
    let out = PrimitiveArray::<TimestampNanosecondType>::new(out.into(), times.nulls().cloned());
    Some(Arc::new(out.with_timezone_opt(timezone(times.data_type()))))
}

fn timezone(t: &DataType) -> Option<Arc<str>> {
    match t {
        DataType::Timestamp(_, tz) => tz.clone(),
        _ => None,
    }
}

/// `date_bin(stride, times, origin)` of a nanosecond timestamp array, exactly as the SQL
/// function computes it (DataFusion's code where a row could overflow).
pub(crate) fn binned(times: &ArrayRef, stride: i64, origin: i64) -> Result<ArrayRef> {
    if let Some(t) = times.as_primitive_opt::<TimestampNanosecondType>()
        && let Some(out) = bin(t, stride, origin)
    {
        return Ok(out);
    }
    let tz = timezone(times.data_type());
    let args = vec![
        ColumnarValue::Scalar(ScalarValue::IntervalMonthDayNano(Some(
            IntervalMonthDayNano::new(0, 0, stride),
        ))),
        ColumnarValue::Array(Arc::clone(times)),
        ColumnarValue::Scalar(ScalarValue::TimestampNanosecond(Some(origin), tz)),
    ];
    let arg_fields = args
        .iter()
        .map(|a| Arc::new(Field::new("a", a.data_type(), true)))
        .collect();
    datafusion::functions::datetime::date_bin()
        .invoke_with_args(ScalarFunctionArgs {
            args,
            arg_fields,
            number_rows: times.len(),
            return_field: Arc::new(Field::new("r", times.data_type().clone(), true)),
            config_options: Arc::new(ConfigOptions::default()),
        })?
        .into_array(times.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::TimestampNanosecondArray;
    use proptest::prelude::*;

    /// DataFusion's `date_bin` on the same arguments, and ours.
    fn both(
        stride: ScalarValue,
        times: Vec<Option<i64>>,
        origin: Option<i64>,
    ) -> (ArrayRef, ArrayRef) {
        let tz: Option<Arc<str>> = Some("UTC".into());
        let array: ArrayRef =
            Arc::new(TimestampNanosecondArray::from(times.clone()).with_timezone_opt(tz.clone()));
        let mut args = vec![
            ColumnarValue::Scalar(stride),
            ColumnarValue::Array(Arc::clone(&array)),
        ];
        if let Some(o) = origin {
            args.push(ColumnarValue::Scalar(ScalarValue::TimestampNanosecond(
                Some(o),
                tz.clone(),
            )));
        }
        let run = |f: &ScalarUDF| {
            let arg_fields = args
                .iter()
                .map(|a| Arc::new(Field::new("a", a.data_type(), true)))
                .collect();
            let out = f
                .invoke_with_args(ScalarFunctionArgs {
                    args: args.clone(),
                    arg_fields,
                    number_rows: times.len(),
                    return_field: Arc::new(Field::new("r", array.data_type().clone(), true)),
                    config_options: Arc::new(ConfigOptions::default()),
                })
                .unwrap();
            out.into_array(times.len()).unwrap()
        };
        (
            run(&datafusion::functions::datetime::date_bin()),
            run(&date_bin()),
        )
    }

    fn interval(days: i32, nanos: i64) -> ScalarValue {
        ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano::new(0, days, nanos)))
    }

    #[test]
    fn edges_match_datafusion() {
        let five_min = 300_000_000_000;
        let times = vec![
            Some(0),
            Some(1),
            Some(-1),
            Some(five_min),
            Some(five_min - 1),
            Some(-five_min),
            Some(-five_min - 1),
            None,
            Some(1_764_201_600_123_456_789),
            Some(i64::MAX),
            Some(i64::MIN),
        ];
        for stride in [
            interval(0, five_min),
            interval(1, 0),
            interval(0, 1),
            interval(0, 7),
        ] {
            for origin in [
                None,
                Some(0),
                Some(-123),
                Some(five_min / 2),
                Some(i64::MAX),
            ] {
                // with the extremes (the batch goes to DataFusion) and without them
                for ts in [times.clone(), times[..9].to_vec()] {
                    let (want, got) = both(stride.clone(), ts, origin);
                    assert_eq!(&want, &got, "stride {stride:?}, origin {origin:?}");
                }
            }
        }
        // the fast path was taken where it could be (not only the fallback tested)
        let t = TimestampNanosecondArray::from(vec![Some(-1), Some(7)]);
        let out = bin(&t, 5, 0).unwrap();
        assert_eq!(
            out.as_primitive::<TimestampNanosecondType>().values(),
            &[-5, 5]
        );
        assert!(bin(&TimestampNanosecondArray::from(vec![i64::MIN]), 5, 0).is_none());
        // months, zero and negative strides are DataFusion's: months bin by calendar
        let month = ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano::new(1, 0, 0)));
        let (want, got) = both(month, times[..9].to_vec(), None);
        assert_eq!(&want, &got);
        assert!(fixed_stride(&ColumnarValue::Scalar(interval(0, 0))).is_none());
        assert!(fixed_stride(&ColumnarValue::Scalar(interval(-1, 0))).is_none());
    }

    proptest! {
        #[test]
        fn any_times_match_datafusion(
            times in proptest::collection::vec(proptest::option::weighted(0.9, any::<i64>()), 1..64),
            near in proptest::collection::vec(-10_000_000_000_000i64..10_000_000_000_000, 1..64),
            stride in 1i64..200_000_000_000_000,
            origin in proptest::option::of(-1_000_000_000_000_000i64..1_000_000_000_000_000),
        ) {
            let stride = interval(0, stride);
            let (want, got) = both(stride.clone(), times, origin);
            prop_assert_eq!(&want, &got);
            let (want, got) = both(stride.clone(), near.iter().copied().map(Some).collect(), origin);
            prop_assert_eq!(&want, &got);
            // in time order, as a series arrives: most rows reuse the bucket before
            let mut sorted = near;
            sorted.sort_unstable();
            let (want, got) = both(stride, sorted.into_iter().map(Some).collect(), origin);
            prop_assert_eq!(&want, &got);
        }
    }
}

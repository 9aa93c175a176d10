//! Integer columns a segment stores narrow, widened while scanning without arrow's cast.
//!
//! A segment stores an `Int64` (`UInt64`) field whose values fit in 32 bits as Parquet
//! `INT32` (`narrow_integers`, `talo_engine::decimal`); the scan reads the file's `Int32`
//! and DataFusion's default adapter wraps the column in a `CastExpr` to the table's type.
//! arrow evaluates that cast as a checked conversion, value by value, into a zeroed
//! buffer: 2 % of a 5-minute-max query's CPU, plus its `memset` and allocation (`perf`),
//! for a widening that cannot fail. [`SegmentExprAdapterFactory`] adapts every
//! expression as DataFusion's does, then replaces such a cast of a projected column by
//! [`Widen`], a sign (zero) extension the compiler vectorises.
//!
//! Only a projected column itself (the expression's root) is replaced: a filter keeps
//! DataFusion's `CastExpr`, which the pruning of row groups and pages understands.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{
    DataType, FieldRef, Int32Type, Int64Type, Schema, SchemaRef, UInt32Type, UInt64Type,
};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::{DataFusionError, Result};
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::expressions::{CastExpr, Column};
use datafusion::physical_expr_adapter::{
    DefaultPhysicalExprAdapterFactory, PhysicalExprAdapter, PhysicalExprAdapterFactory,
};
use datafusion::physical_plan::PhysicalExpr;

/// DataFusion's adapter, with [`Widen`] for a projected column stored narrow.
#[derive(Debug)]
pub(crate) struct SegmentExprAdapterFactory;

impl PhysicalExprAdapterFactory for SegmentExprAdapterFactory {
    fn create(
        &self,
        logical_file_schema: SchemaRef,
        physical_file_schema: SchemaRef,
    ) -> Result<Arc<dyn PhysicalExprAdapter>> {
        Ok(Arc::new(SegmentExprAdapter {
            inner: DefaultPhysicalExprAdapterFactory
                .create(logical_file_schema, Arc::clone(&physical_file_schema))?,
            file: physical_file_schema,
        }))
    }
}

#[derive(Debug)]
struct SegmentExprAdapter {
    inner: Arc<dyn PhysicalExprAdapter>,
    /// The file's own schema, which the adapted expressions read.
    file: SchemaRef,
}

impl PhysicalExprAdapter for SegmentExprAdapter {
    fn rewrite(&self, expr: Arc<dyn PhysicalExpr>) -> Result<Arc<dyn PhysicalExpr>> {
        let adapted = self.inner.rewrite(expr)?;
        Ok(Widen::of(&adapted, &self.file).unwrap_or(adapted))
    }
}

/// A 32-bit integer column as its 64-bit table type (`Int32` → `Int64`, `UInt32` →
/// `UInt64`): what `CAST(column AS ...)` gives, without checking what cannot fail.
#[derive(Debug, Clone, Eq)]
pub(crate) struct Widen {
    column: Arc<dyn PhysicalExpr>,
    /// The cast's target field (the table's name, type, nullability and metadata).
    field: FieldRef,
}

impl Widen {
    /// `Some` where `expr` casts a bare column of `file` from 32 to 64 bits.
    fn of(expr: &Arc<dyn PhysicalExpr>, file: &Schema) -> Option<Arc<dyn PhysicalExpr>> {
        let cast = expr.downcast_ref::<CastExpr>()?;
        let column = cast.expr().downcast_ref::<Column>()?;
        let stored = file.fields().get(column.index())?;
        if stored.name() != column.name() {
            return None;
        }
        matches!(
            (stored.data_type(), cast.cast_type()),
            (DataType::Int32, DataType::Int64) | (DataType::UInt32, DataType::UInt64)
        )
        .then(|| {
            Arc::new(Widen {
                column: Arc::clone(cast.expr()),
                field: Arc::clone(cast.target_field()),
            }) as Arc<dyn PhysicalExpr>
        })
    }
}

// by hand, as DataFusion's own expressions (rust-lang/rust#78808)
impl PartialEq for Widen {
    fn eq(&self, other: &Self) -> bool {
        self.column.eq(&other.column) && self.field == other.field
    }
}

impl Hash for Widen {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.column.hash(state);
        self.field.hash(state);
    }
}

impl fmt::Display for Widen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WIDEN({} AS {})", self.column, self.field.data_type())
    }
}

impl PhysicalExpr for Widen {
    fn return_field(&self, _input_schema: &Schema) -> Result<FieldRef> {
        Ok(Arc::clone(&self.field))
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        let wide: Arc<dyn Array> = match self.column.evaluate(batch)? {
            ColumnarValue::Array(a) => match (a.data_type(), self.field.data_type()) {
                (DataType::Int32, DataType::Int64) => Arc::new(
                    a.as_primitive::<Int32Type>()
                        .unary::<_, Int64Type>(i64::from),
                ),
                (DataType::UInt32, DataType::UInt64) => Arc::new(
                    a.as_primitive::<UInt32Type>()
                        .unary::<_, UInt64Type>(u64::from),
                ),
                (from, to) => {
                    return Err(DataFusionError::Internal(format!(
                        "WIDEN cannot make {to} of {from}"
                    )));
                }
            },
            ColumnarValue::Scalar(s) => {
                return Ok(ColumnarValue::Scalar(s.cast_to(self.field.data_type())?));
            }
        };
        Ok(ColumnarValue::Array(wide))
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.column]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        match (children.pop(), children.is_empty()) {
            (Some(column), true) => Ok(Arc::new(Widen {
                column,
                field: Arc::clone(&self.field),
            })),
            _ => Err(DataFusionError::Internal("WIDEN takes one child".into())),
        }
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CAST(")?;
        self.column.fmt_sql(f)?;
        write!(f, " AS {})", self.field.data_type())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{ArrayRef, Int32Array, Int64Array, UInt32Array, UInt64Array};
    use datafusion::arrow::datatypes::Field;
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::logical_expr::Operator;
    use datafusion::physical_expr::expressions::{BinaryExpr, lit};

    fn schema(fields: &[(&str, DataType)]) -> SchemaRef {
        Arc::new(Schema::new(
            fields
                .iter()
                .map(|(n, t)| Field::new(*n, t.clone(), true))
                .collect::<Vec<_>>(),
        ))
    }

    fn adapter(table: &SchemaRef, file: &SchemaRef) -> Arc<dyn PhysicalExprAdapter> {
        SegmentExprAdapterFactory
            .create(Arc::clone(table), Arc::clone(file))
            .unwrap()
    }

    fn column(name: &str, table: &Schema) -> Arc<dyn PhysicalExpr> {
        Arc::new(Column::new(name, table.index_of(name).unwrap()))
    }

    #[test]
    fn a_narrow_stored_column_reads_widened_as_a_cast_would() {
        let table = schema(&[
            ("t", DataType::Int64),
            ("co2", DataType::Int64),
            ("n", DataType::UInt64),
        ]);
        // the file stores its columns in another order, narrow
        let file = schema(&[
            ("n", DataType::UInt32),
            ("co2", DataType::Int32),
            ("t", DataType::Int64),
        ]);
        let a = adapter(&table, &file);
        let ints = Int32Array::from(vec![
            Some(i32::MIN),
            Some(-1),
            None,
            Some(0),
            Some(i32::MAX),
        ]);
        let uints = UInt32Array::from(vec![Some(u32::MAX), None, Some(0), Some(7), Some(1)]);
        let batch = RecordBatch::try_new(
            Arc::clone(&file),
            vec![
                Arc::new(uints.clone()) as ArrayRef,
                Arc::new(ints.clone()),
                Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5])),
            ],
        )
        .unwrap();
        for (name, want) in [
            (
                "co2",
                Arc::new(Int64Array::from_iter(ints.iter().map(|v| v.map(i64::from)))) as ArrayRef,
            ),
            (
                "n",
                Arc::new(UInt64Array::from_iter(
                    uints.iter().map(|v| v.map(u64::from)),
                )),
            ),
        ] {
            let e = a.rewrite(column(name, &table)).unwrap();
            assert!(e.downcast_ref::<Widen>().is_some(), "{name}: {e}");
            assert_eq!(e.return_field(&file).unwrap().data_type(), want.data_type());
            let got = e.evaluate(&batch).unwrap().into_array(5).unwrap();
            assert_eq!(&got, &want, "{name}");
            // the same as DataFusion's cast gives
            let cast = DefaultPhysicalExprAdapterFactory
                .create(Arc::clone(&table), Arc::clone(&file))
                .unwrap()
                .rewrite(column(name, &table))
                .unwrap();
            assert!(cast.downcast_ref::<CastExpr>().is_some());
            assert_eq!(&cast.evaluate(&batch).unwrap().into_array(5).unwrap(), &got);
        }
        // a column stored at the table's type stays a column
        let t = a.rewrite(column("t", &table)).unwrap();
        assert!(t.downcast_ref::<Column>().is_some(), "{t}");
    }

    #[test]
    fn a_filter_keeps_the_cast_that_pruning_understands() {
        let table = schema(&[("co2", DataType::Int64)]);
        let file = schema(&[("co2", DataType::Int32)]);
        let filter: Arc<dyn PhysicalExpr> = Arc::new(BinaryExpr::new(
            column("co2", &table),
            Operator::Gt,
            lit(400i64),
        ));
        let e = adapter(&table, &file).rewrite(filter).unwrap();
        let mut widened = 0;
        e.apply(|n| {
            widened += usize::from(n.downcast_ref::<Widen>().is_some());
            Ok(TreeNodeRecursion::Continue)
        })
        .unwrap();
        assert_eq!(widened, 0, "{e}");
        let batch = RecordBatch::try_new(
            Arc::clone(&file),
            vec![Arc::new(Int32Array::from(vec![Some(399), Some(401), None])) as ArrayRef],
        )
        .unwrap();
        let got = e.evaluate(&batch).unwrap().into_array(3).unwrap();
        assert_eq!(
            got.as_boolean().iter().collect::<Vec<_>>(),
            [Some(false), Some(true), None]
        );
    }
}

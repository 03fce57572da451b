//! Query results as JSON rows.
//!
//! Rendering goes through arrow's JSON writer, so timestamps, structs, lists and maps look the
//! same in a query result as everywhere else arrow writes JSON. Rows are arrays in column
//! order rather than objects: a join can return two columns of the same name, and an object
//! would silently keep one of them.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{Field, Schema};
use arrow::error::ArrowError;
use arrow::json::WriterBuilder;
use arrow::json::writer::JsonArray;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use serde_json::{Map, Value};

/// The first `max_rows` rows of `batches` as JSON arrays, one value per column.
///
/// # Errors
///
/// Fails if the JSON writer fails on a batch even after unsupported columns were turned into
/// their display strings.
pub(crate) fn json_rows(
    batches: &[RecordBatch],
    max_rows: usize,
) -> Result<Vec<Vec<Value>>, ArrowError> {
    let mut rows = Vec::new();
    for batch in batches {
        let room = max_rows - rows.len();
        if room == 0 {
            break;
        }
        let batch = positional(&batch.slice(0, batch.num_rows().min(room)))?;
        let objects = match write_json(&batch) {
            Ok(objects) => objects,
            Err(_) => write_json(&stringify_unsupported(&batch)?)?,
        };
        let width = batch.num_columns();
        rows.extend(objects.into_iter().map(|mut object| {
            (0..width)
                .map(|i| object.remove(&i.to_string()).unwrap_or(Value::Null))
                .collect()
        }));
    }
    Ok(rows)
}

/// The batch with its columns named `0`, `1`, ... so that names are unique.
fn positional(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| f.as_ref().clone().with_name(i.to_string()))
        .collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), batch.columns().to_vec())
}

fn write_json(batch: &RecordBatch) -> Result<Vec<Map<String, Value>>, ArrowError> {
    let mut writer = WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, JsonArray>(Vec::new());
    writer.write(batch)?;
    writer.finish()?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&bytes).map_err(|e| ArrowError::JsonError(e.to_string()))
}

/// Columns the JSON writer cannot encode (unions, for one), as their display strings.
fn stringify_unsupported(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        let alone = RecordBatch::try_new(
            Arc::new(Schema::new(vec![field.as_ref().clone()])),
            vec![column.clone()],
        )?;
        if write_json(&alone).is_ok() {
            fields.push(field.as_ref().clone());
            columns.push(column.clone());
        } else {
            let options = FormatOptions::new().with_null("");
            let formatter = ArrayFormatter::try_new(column.as_ref(), &options)?;
            let strings: StringArray = (0..column.len())
                .map(|i| column.is_valid(i).then(|| formatter.value(i).to_string()))
                .collect();
            fields.push(Field::new(
                field.name(),
                arrow::datatypes::DataType::Utf8,
                true,
            ));
            columns.push(Arc::new(strings) as ArrayRef);
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringArray};

    use super::*;

    #[test]
    fn duplicate_names_stay_apart_and_nulls_are_explicit() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("x", arrow::datatypes::DataType::Int64, true),
            Field::new("x", arrow::datatypes::DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![Some(1), None])),
                Arc::new(StringArray::from(vec![Some("a"), Some("b")])),
            ],
        )
        .expect("valid batch");
        let rows = json_rows(&[batch.clone(), batch], 3).expect("renders");
        assert_eq!(
            rows,
            [
                vec![Value::from(1), Value::from("a")],
                vec![Value::Null, Value::from("b")],
                vec![Value::from(1), Value::from("a")],
            ]
        );
    }
}

//! The catalog: databases, their tables and each table's columns with their types.
//!
//! The catalog is an immutable value: the writer thread derives a new one when a write
//! brings a new database, table or column, and publishes it with the next snapshot.
//! It is persisted as `catalog.json` at every flush (before the manifest), and rebuilt
//! from the WAL for anything newer: every WAL record carries its batches' schemas.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::model::{ColumnType, TIME_COLUMN, schema_for};

const CATALOG_FORMAT: &str = "talo-catalog";
const CATALOG_VERSION: u32 = 1;
/// File name of the persisted catalog inside the data directory.
pub const CATALOG_FILE: &str = "catalog.json";

/// All databases.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    databases: BTreeMap<String, Arc<DatabaseDef>>,
}

/// One database: a namespace of tables.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DatabaseDef {
    pub tables: BTreeMap<String, Arc<TableDef>>,
}

/// One table: its columns in storage order (`time` first, then in order of creation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableDef {
    pub name: String,
    pub columns: Vec<ColumnDef>,
    #[serde(skip)]
    schema: Option<SchemaRef>,
}

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnDef {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: ColumnType,
}

impl TableDef {
    fn new(name: &str) -> Self {
        let mut t = TableDef {
            name: name.to_string(),
            columns: vec![ColumnDef {
                name: TIME_COLUMN.to_string(),
                ty: ColumnType::Time,
            }],
            schema: None,
        };
        t.refresh_schema();
        t
    }

    fn refresh_schema(&mut self) {
        let cols: Vec<(String, ColumnType)> = self
            .columns
            .iter()
            .map(|c| (c.name.clone(), c.ty))
            .collect();
        self.schema = Some(schema_for(&cols));
    }

    /// The type of a column, if the table has it.
    pub fn column_type(&self, name: &str) -> Option<ColumnType> {
        self.columns.iter().find(|c| c.name == name).map(|c| c.ty)
    }

    /// The table's current Arrow schema (all columns ever added).
    pub fn schema(&self) -> SchemaRef {
        match &self.schema {
            Some(s) => Arc::clone(s),
            None => {
                let cols: Vec<(String, ColumnType)> = self
                    .columns
                    .iter()
                    .map(|c| (c.name.clone(), c.ty))
                    .collect();
                schema_for(&cols)
            }
        }
    }

    /// Names of the tag columns, in storage order.
    pub fn tag_names(&self) -> impl Iterator<Item = &str> {
        self.columns
            .iter()
            .filter(|c| c.ty == ColumnType::Tag)
            .map(|c| c.name.as_str())
    }
}

#[derive(Serialize, Deserialize)]
struct CatalogFile {
    format: String,
    version: u32,
    databases: BTreeMap<String, DatabaseDef>,
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// Names of all databases.
    pub fn database_names(&self) -> impl Iterator<Item = &str> {
        self.databases.keys().map(String::as_str)
    }

    /// A database by name.
    pub fn database(&self, db: &str) -> Option<&Arc<DatabaseDef>> {
        self.databases.get(db)
    }

    /// A table by database and name.
    pub fn table(&self, db: &str, table: &str) -> Option<&Arc<TableDef>> {
        self.databases.get(db).and_then(|d| d.tables.get(table))
    }

    /// Make sure a database exists (no-op when it does).
    pub fn ensure_database(&mut self, db: &str) {
        self.databases.entry(db.to_string()).or_default();
    }

    /// Add columns to a table (creating database and table as needed). The caller has
    /// checked that none of `new_columns` conflicts with an existing column.
    pub(crate) fn add_columns(&mut self, db: &str, table: &str, new_columns: &[ColumnDef]) {
        let dbdef = Arc::make_mut(self.databases.entry(db.to_string()).or_default());
        let tdef = Arc::make_mut(
            dbdef
                .tables
                .entry(table.to_string())
                .or_insert_with(|| Arc::new(TableDef::new(table))),
        );
        let mut changed = false;
        for c in new_columns {
            if tdef.column_type(&c.name).is_none() {
                tdef.columns.push(c.clone());
                changed = true;
            }
        }
        if changed {
            tdef.refresh_schema();
        }
    }

    /// Load `catalog.json` from the data directory; an empty catalog when it is absent.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(CATALOG_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::new()),
            Err(e) => return Err(e).at(&path),
        };
        let file: CatalogFile = serde_json::from_slice(&bytes).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        if file.format != CATALOG_FORMAT || file.version > CATALOG_VERSION {
            return Err(Error::Corrupt {
                path,
                reason: format!(
                    "unsupported catalog format {:?} version {}",
                    file.format, file.version
                ),
            });
        }
        let databases = file
            .databases
            .into_iter()
            .map(|(name, mut d)| {
                for t in d.tables.values_mut() {
                    Arc::make_mut(t).refresh_schema();
                }
                (name, Arc::new(d))
            })
            .collect();
        Ok(Catalog { databases })
    }

    /// Persist atomically as `catalog.json`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let file = CatalogFile {
            format: CATALOG_FORMAT.to_string(),
            version: CATALOG_VERSION,
            databases: self
                .databases
                .iter()
                .map(|(k, v)| (k.clone(), DatabaseDef::clone(v)))
                .collect(),
        };
        let path = dir.join(CATALOG_FILE);
        let bytes = serde_json::to_vec_pretty(&file).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        fsutil::publish_file(&path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::FieldType;

    #[test]
    fn add_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Catalog::new();
        c.add_columns(
            "house",
            "env",
            &[
                ColumnDef {
                    name: "room".into(),
                    ty: ColumnType::Tag,
                },
                ColumnDef {
                    name: "temp".into(),
                    ty: ColumnType::Field(FieldType::F64),
                },
            ],
        );
        c.save(dir.path()).unwrap();
        let loaded = Catalog::load(dir.path()).unwrap();
        let t = loaded.table("house", "env").unwrap();
        assert_eq!(
            t.column_type("temp"),
            Some(ColumnType::Field(FieldType::F64))
        );
        assert_eq!(t.schema().fields().len(), 3);
        assert_eq!(loaded, c);
    }
}

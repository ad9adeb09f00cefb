//! How [`RunId`] and [`AttemptId`] go in and out of SQLite columns through sqlx: as the INTEGER
//! row ids they are; and [`PipelineName`] and [`JobId`]: as TEXT, checked again when read (a
//! name that breaks the rules means the file is not what we wrote). The ids themselves belong to
//! `status`, the names to `spec`. The direct writer (rusqlite) binds the ids as their numbers
//! (`ToSql` below) and the names by their text (`.as_str()`).

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::sqlite::{SqliteArgumentsBuffer, SqliteTypeInfo, SqliteValueRef};
use std::sync::Arc;

use sqlx::{Decode, Encode, Sqlite, Type};

use super::{AttemptId, RunId};
use crate::spec::{JobId, PipelineName};

macro_rules! id_column {
    ($name:ident) => {
        impl Type<Sqlite> for $name {
            fn type_info() -> SqliteTypeInfo {
                <i64 as Type<Sqlite>>::type_info()
            }

            fn compatible(ty: &SqliteTypeInfo) -> bool {
                <i64 as Type<Sqlite>>::compatible(ty)
            }
        }

        impl Encode<'_, Sqlite> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut SqliteArgumentsBuffer,
            ) -> Result<IsNull, BoxDynError> {
                <i64 as Encode<'_, Sqlite>>::encode_by_ref(&self.get(), buf)
            }
        }

        impl<'r> Decode<'r, Sqlite> for $name {
            fn decode(value: SqliteValueRef<'r>) -> Result<$name, BoxDynError> {
                <i64 as Decode<'r, Sqlite>>::decode(value).map($name::from)
            }
        }
    };
}

id_column!(RunId);
id_column!(AttemptId);

macro_rules! id_param {
    ($name:ident) => {
        impl rusqlite::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(self.get().into())
            }
        }
    };
}

id_param!(RunId);
id_param!(AttemptId);

macro_rules! name_column {
    ($name:ident) => {
        impl Type<Sqlite> for $name {
            fn type_info() -> SqliteTypeInfo {
                <str as Type<Sqlite>>::type_info()
            }

            fn compatible(ty: &SqliteTypeInfo) -> bool {
                <str as Type<Sqlite>>::compatible(ty)
            }
        }

        impl Encode<'_, Sqlite> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut SqliteArgumentsBuffer,
            ) -> Result<IsNull, BoxDynError> {
                // The shared text itself, not a copy.
                <Arc<str> as Encode<'_, Sqlite>>::encode(self.shared(), buf)
            }
        }

        impl<'r> Decode<'r, Sqlite> for $name {
            fn decode(value: SqliteValueRef<'r>) -> Result<$name, BoxDynError> {
                let text = <&str as Decode<'r, Sqlite>>::decode(value)?;
                Ok($name::parse(text)?)
            }
        }
    };
}

name_column!(PipelineName);
name_column!(JobId);

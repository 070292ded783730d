//! The web console's state in the registry: its operators (one record per login name holding the role and the
//! Argon2id hash of the issued password, `crate::console::users`, never the password) and its charts' samples.

use redb::ReadableTable;

use crate::console::Sample;
use crate::console::users::User;

use super::{CONSOLE_CHARTS, CONSOLE_USERS, Registry, RegistryError, db_err, decode, encode, read_table};

impl Registry {
    /// Stores `user`, replacing a record of the same name (a re-issued credential).
    pub fn console_user_put(&self, user: &User) -> Result<(), RegistryError> {
        let bytes = encode(user)?;
        let tx = self.db.begin_write().map_err(db_err)?;
        tx.open_table(CONSOLE_USERS).map_err(db_err)?.insert(user.name.as_str(), bytes.as_slice()).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(())
    }

    /// The user with this login name, if any.
    pub fn console_user(&self, name: &str) -> Result<Option<User>, RegistryError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let Some(t) = read_table(&tx, CONSOLE_USERS)? else { return Ok(None) };
        t.get(name).map_err(db_err)?.map(|v| decode(name, v.value())).transpose()
    }

    /// Every console user, by name.
    pub fn console_users(&self) -> Result<Vec<User>, RegistryError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let Some(t) = read_table(&tx, CONSOLE_USERS)? else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Removes a console user; whether there was one.
    pub fn console_user_remove(&self, name: &str) -> Result<bool, RegistryError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        let removed = tx.open_table(CONSOLE_USERS).map_err(db_err)?.remove(name).map_err(db_err)?.is_some();
        tx.commit().map_err(db_err)?;
        Ok(removed)
    }

    /// Stores a release's chart samples, replacing what was stored for it.
    pub fn console_chart_put(&self, release: &str, samples: &[Sample]) -> Result<(), RegistryError> {
        let bytes = encode(&samples)?;
        let tx = self.db.begin_write().map_err(db_err)?;
        tx.open_table(CONSOLE_CHARTS).map_err(db_err)?.insert(release, bytes.as_slice()).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(())
    }

    /// Every release's stored chart samples.
    pub fn console_charts(&self) -> Result<Vec<(String, Vec<Sample>)>, RegistryError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let Some(t) = read_table(&tx, CONSOLE_CHARTS)? else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.push((k.value().to_owned(), decode(k.value(), v.value())?));
        }
        Ok(out)
    }
}

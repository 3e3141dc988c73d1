//! Values shared by key for as long as someone holds them: the first caller with a key makes the
//! value, later ones get the same `Arc`, and the value is freed when the last `Arc` goes (the
//! registry holds only a weak reference).
use std::sync::{Arc, Mutex, Weak};

/// A process-wide table of shared values (usable in a `static`).
pub struct Registry<K, V> {
    entries: Mutex<Vec<(K, Weak<V>)>>,
}

impl<K: PartialEq + Clone, V> Registry<K, V> {
    pub const fn new() -> Self {
        Registry {
            entries: Mutex::new(Vec::new()),
        }
    }

    /// The value for `key` if one is alive, else the one `make` returns (kept for later callers).
    /// Also says whether it was made by this call.
    ///
    /// The table stays locked while `make` runs: a second caller with the same key waits for the
    /// first one's value instead of preparing a second copy (preparing a model takes about a
    /// second; two elements started together would otherwise both pay it and hold two copies).
    /// Callers with other keys wait too; values are made rarely, at state changes.
    pub fn get_or_try_insert_with<E>(
        &self,
        key: &K,
        make: impl FnOnce() -> Result<V, E>,
    ) -> Result<(Arc<V>, bool), E> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|(_, v)| v.strong_count() > 0);
        if let Some(v) = entries
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.upgrade())
        {
            return Ok((v, false));
        }
        let value = Arc::new(make()?);
        entries.push((key.clone(), Arc::downgrade(&value)));
        Ok((value, true))
    }

    /// The values alive now.
    pub fn live(&self) -> Vec<Weak<V>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .iter()
            .filter(|(_, v)| v.strong_count() > 0)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

impl<K: PartialEq + Clone, V> Default for Registry<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_while_held_made_again_after() {
        let reg: Registry<&str, String> = Registry::new();
        let (a, made) = reg
            .get_or_try_insert_with(&"base", || Ok::<_, ()>("A".to_string()))
            .unwrap();
        assert!(made);
        let (b, made) = reg
            .get_or_try_insert_with(&"base", || Ok::<_, ()>("B".to_string()))
            .unwrap();
        assert!(!made, "held: not made again");
        assert!(Arc::ptr_eq(&a, &b));
        let (other, made) = reg
            .get_or_try_insert_with(&"tiny", || Ok::<_, ()>("T".to_string()))
            .unwrap();
        assert!(made && *other == "T");
        drop((a, b));
        let (c, made) = reg
            .get_or_try_insert_with(&"base", || Ok::<_, ()>("C".to_string()))
            .unwrap();
        assert!(made && *c == "C", "freed with its last holder, made again");
        assert_eq!(reg.live().len(), 2);
    }

    #[test]
    fn a_failure_is_not_kept() {
        let reg: Registry<u8, u8> = Registry::new();
        assert_eq!(
            reg.get_or_try_insert_with(&1, || Err("no")).err(),
            Some("no")
        );
        let (v, made) = reg.get_or_try_insert_with(&1, || Ok::<_, ()>(7)).unwrap();
        assert!(made && *v == 7);
    }
}

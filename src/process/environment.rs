//! A child's complete environment, kept as the `KEY=VALUE\0` strings `execve` takes, so that
//! starting a child copies it once into one buffer rather than through a map of owned strings.

use std::fmt;

/// The variables a child gets, in the order given; a key given again replaces its earlier value
/// (the last one wins, as with `Command::env`).
#[derive(Clone, Default)]
pub struct Environment {
    /// `KEY=VALUE\0` for every entry, replaced ones included.
    block: Vec<u8>,
    entries: Vec<Entry>,
    /// Some key or value held a NUL byte, which no environment can carry.
    has_nul: bool,
}

#[derive(Clone, Copy)]
struct Entry {
    /// Offset of `KEY=VALUE\0` in `block`.
    start: usize,
    key_len: usize,
    /// Its `=VALUE` part ends here (the NUL).
    end: usize,
    /// A later entry has the same key.
    replaced: bool,
}

impl Environment {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value`, replacing an earlier value.
    pub fn push(&mut self, key: &str, value: &str) {
        let key_bytes = key.as_bytes();
        for entry in self.entries.iter_mut().filter(|e| !e.replaced) {
            if entry.key_len == key_bytes.len()
                && &self.block[entry.start..entry.start + entry.key_len] == key_bytes
            {
                entry.replaced = true;
            }
        }
        self.has_nul |= key_bytes.contains(&0) || value.as_bytes().contains(&0);
        let start = self.block.len();
        self.block.reserve(key.len() + value.len() + 2);
        self.block.extend_from_slice(key_bytes);
        self.block.push(b'=');
        self.block.extend_from_slice(value.as_bytes());
        let end = self.block.len();
        self.block.push(0);
        self.entries.push(Entry {
            start,
            key_len: key.len(),
            end,
            replaced: false,
        });
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// The variables in effect, in the order set (a replaced key where it was last set).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.live().map(|e| {
            let text = std::str::from_utf8(&self.block[e.start..e.end]).unwrap_or_default();
            let (key, value) = text.split_at(e.key_len);
            (key, &value[1..])
        })
    }

    /// Whether some key or value holds a NUL byte (the child cannot be started).
    pub(super) fn has_nul(&self) -> bool {
        self.has_nul
    }

    /// The block and the start of every `KEY=VALUE\0` in effect, for `execve`'s array.
    pub(super) fn strings(&self) -> (&[u8], impl Iterator<Item = usize> + '_) {
        (&self.block, self.live().map(|e| e.start))
    }

    fn live(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| !e.replaced)
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Environment {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(vars: I) -> Self {
        let mut env = Environment::new();
        env.extend(vars);
        env
    }
}

impl<K: AsRef<str>, V: AsRef<str>> Extend<(K, V)> for Environment {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, vars: I) {
        for (key, value) in vars {
            self.push(key.as_ref(), value.as_ref());
        }
    }
}

impl fmt::Debug for Environment {
    // Keys only: values may be secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter().map(|(k, _)| k)).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::Environment;

    #[test]
    fn a_key_set_again_takes_the_last_value() {
        let mut env: Environment = [("A", "1"), ("B", "2")].into_iter().collect();
        env.push("A", "3");
        env.push("C", "");
        let vars: Vec<_> = env.iter().collect();
        assert_eq!(vars, [("B", "2"), ("A", "3"), ("C", "")]);
        assert_eq!(env.get("A"), Some("3"));
        assert_eq!(env.get("D"), None);
        let (block, starts) = env.strings();
        let strings: Vec<&[u8]> = starts
            .map(|s| {
                let len = block[s..].iter().position(|b| *b == 0).expect("NUL");
                &block[s..s + len]
            })
            .collect();
        assert_eq!(strings, [&b"B=2"[..], b"A=3", b"C="]);
    }

    #[test]
    fn a_value_may_hold_an_equals_sign_but_not_a_nul() {
        let mut env = Environment::new();
        env.push("URL", "a=b=c");
        assert_eq!(env.get("URL"), Some("a=b=c"));
        assert!(!env.has_nul());
        env.push("BAD", "x\0y");
        assert!(env.has_nul());
    }
}

"""The books: the manifest of every source unit, its attempts and its one disposition, and one key's story."""

"""The data side: sources, downloads, readers, protocols, and the prepared store."""

"""Deploy a bundle to an edge device over SSH (or to a folder), verify it there, switch atomically."""

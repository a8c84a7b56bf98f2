//! Quiver IVF engine.

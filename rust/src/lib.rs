//! wirestream's compiled packet core, imported from Python as `wirestream._core`.
//!
//! The per-packet and per-message paths live here (docs/architecture.md, "The compiled
//! core"); everything around them stays Python. One module per concern, in the order the
//! data flows; each module's docstring says what it takes and what it gives.

use pyo3::prelude::*;

/// The version of the compiled core (the crate's), for `wirestream doctor`.
#[pyfunction]
fn core_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(core_version, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_is_the_crate_version() {
        assert_eq!(super::core_version(), env!("CARGO_PKG_VERSION"));
    }
}

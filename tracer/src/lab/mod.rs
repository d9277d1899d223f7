//! `tracer lab`: the incidents, rebuilt in throwaway namespaces.
pub mod netlab;

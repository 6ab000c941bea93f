//! Streaming, namespace-aware rewrite of the SOAP envelope start.

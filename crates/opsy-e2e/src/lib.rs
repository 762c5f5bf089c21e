//! Tests of both operators together, on a real Kubernetes control plane (`opsy-testkit`) and
//! the AWS emulator: what only a real API server shows (watches, status echoes, RBAC, the
//! garbage collector). The tests live in `tests/`.

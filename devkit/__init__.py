"""Tools for developing the service, shared by tests/ and benchmarks/: process helpers (procs) and
the local random-weight model builder (models). Never imported by gateway/, worker/ or shared/, and
not installed into the images."""

"""Tools for the demo and the tests: the local Medplum server's control."""

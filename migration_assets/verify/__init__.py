"""What Medplum holds against what the ledger says: census, prerequisites, reconciliation, references,
the books and the evidence files."""

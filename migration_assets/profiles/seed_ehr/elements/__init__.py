"""The seed EHR's data elements, one module each, each defining `ELEMENT`."""

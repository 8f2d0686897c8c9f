"""The fixture profile's data elements, one module each (found by discover_elements)."""
